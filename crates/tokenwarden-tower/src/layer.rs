//! [`TokenLayer`] and its settings.

use std::sync::Arc;

use tokenwarden_core::{LayerPolicy, Scope, TokenCache};
use tower::Layer;

use crate::TokenService;

/// The settings shared by a layer and the services it makes.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) cache: TokenCache,
    pub(crate) policy: LayerPolicy,
}

impl Settings {
    pub(crate) fn new(cache: TokenCache, scope: Scope) -> Self {
        Self {
            cache,
            policy: LayerPolicy::new(scope),
        }
    }

    /// Applies a change to the policy.
    pub(crate) fn edit(&mut self, change: impl FnOnce(LayerPolicy) -> LayerPolicy) {
        let placeholder = LayerPolicy::new(self.policy.scope().clone());
        self.policy = change(std::mem::replace(&mut self.policy, placeholder));
    }
}

macro_rules! settings_setters {
    () => {
        /// Replaces the whole [`LayerPolicy`](tokenwarden_core::LayerPolicy).
        #[must_use]
        pub fn with_policy(mut self, policy: tokenwarden_core::LayerPolicy) -> Self {
            self.settings_mut().policy = policy;
            self
        }

        /// Decides which responses mean the token was rejected. Default:
        /// [`DefaultClassifier`](tokenwarden_core::DefaultClassifier) (401, unless the
        /// `WWW-Authenticate` challenge names an error a fresh token cannot fix).
        #[must_use]
        pub fn with_classifier(mut self, classifier: impl tokenwarden_core::Classifier) -> Self {
            self.settings_mut().edit(|p| p.with_classifier(classifier));
            self
        }

        /// Also treat `403 Forbidden` as a rejected token (with the default classifier).
        #[must_use]
        pub fn with_forbidden_as_rejection(mut self) -> Self {
            self.settings_mut()
                .edit(|p| p.with_forbidden_as_rejection());
            self
        }

        /// The largest request body kept for a replay. Default
        /// [`DEFAULT_MAX_REPLAY_BODY`](tokenwarden_core::DEFAULT_MAX_REPLAY_BODY) (64 KiB).
        /// Larger bodies are still sent, once.
        #[must_use]
        pub fn with_max_replay_body(mut self, bytes: usize) -> Self {
            self.settings_mut().edit(|p| p.with_max_replay_body(bytes));
            self
        }

        /// How much of a response body a classifier that asked for it gets to see. Default 8 KiB.
        #[must_use]
        pub fn with_max_inspect_body(mut self, bytes: usize) -> Self {
            self.settings_mut().edit(|p| p.with_max_inspect_body(bytes));
            self
        }

        /// Allow tokens on plain `http://` requests to in-scope hosts that are not loopback. Off by default: such requests fail with
        /// [`InsecureTransport`](tokenwarden_core::InsecureTransport) before they are sent.
        /// Only for a network you trust end to end: anyone on the path reads the token.
        #[must_use]
        pub fn with_insecure_http(mut self, allow: bool) -> Self {
            self.settings_mut().edit(|p| p.with_insecure_http(allow));
            self
        }
    };
}
pub(crate) use settings_setters;

/// Puts the cache's token on every request and replays requests whose token was rejected.
///
/// See the [crate docs](crate) for the behaviour and an example.
#[derive(Clone, Debug)]
pub struct TokenLayer {
    // One shared allocation: cloning the service per request touches one reference count.
    pub(crate) settings: Arc<Settings>,
}

impl TokenLayer {
    /// A layer that takes its tokens from `cache` and puts them on requests to the origins of
    /// `scope` only — requests anywhere else (such as a redirect's target) go through
    /// untouched. There is no default: name the API's origin
    /// ([`Scope::origin`](tokenwarden_core::Scope::origin)), or opt in to every origin with
    /// [`Scope::any_origin`](tokenwarden_core::Scope::any_origin).
    pub fn new(cache: TokenCache, scope: impl Into<Scope>) -> Self {
        Self {
            settings: Arc::new(Settings::new(cache, scope.into())),
        }
    }

    /// The cache tokens come from.
    pub fn cache(&self) -> &TokenCache {
        &self.settings.cache
    }

    fn settings_mut(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    settings_setters!();
}

impl<S: Clone> Layer<S> for TokenLayer {
    type Service = TokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenService::with_settings(inner, (*self.settings).clone())
    }
}
