//! [`TokenLayer`] and its settings.

use std::sync::Arc;

use tokenwarden_core::{LayerPolicy, TokenCache};
use tower::Layer;

use crate::TokenService;

/// The settings shared by a layer and the services it makes.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) cache: TokenCache,
    pub(crate) policy: LayerPolicy,
}

impl Settings {
    pub(crate) fn new(cache: TokenCache) -> Self {
        Self {
            cache,
            policy: LayerPolicy::default(),
        }
    }

    /// Applies a change to the policy.
    pub(crate) fn edit(&mut self, change: impl FnOnce(LayerPolicy) -> LayerPolicy) {
        self.policy = change(std::mem::take(&mut self.policy));
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

        /// Allow tokens on plain `http://` requests to hosts that are not loopback. Off by
        /// default: such requests fail with
        /// [`InsecureTransport`](tokenwarden_core::InsecureTransport) before they are sent.
        #[must_use]
        pub fn with_insecure_http(mut self, allow: bool) -> Self {
            self.settings_mut().edit(|p| p.with_insecure_http(allow));
            self
        }

        /// Only requests to this origin (`scheme://host[:port]`, e.g. the API's base URL) get
        /// tokens; requests elsewhere, such as the target of a redirect to another host, pass
        /// through untouched. Call it again to add origins. Default: every origin.
        #[must_use]
        pub fn with_origin(mut self, origin: &http::Uri) -> Self {
            self.settings_mut().edit(|p| p.with_origin(origin));
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
    /// A layer that takes its tokens from `cache`.
    pub fn new(cache: TokenCache) -> Self {
        Self {
            settings: Arc::new(Settings::new(cache)),
        }
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
