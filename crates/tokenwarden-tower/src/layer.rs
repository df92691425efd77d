//! [`TokenLayer`] and its settings.

use std::fmt;
use std::sync::Arc;

use http::Uri;
use tokenwarden_core::{Classifier, DEFAULT_MAX_REPLAY_BODY, DefaultClassifier, TokenCache};
use tower::Layer;

use crate::TokenService;

/// How much of a rejected response's body is read (to let the connection be reused) before the
/// replay: beyond this the body is dropped.
pub(crate) const DRAIN_LIMIT: usize = 64 * 1024;

/// The settings shared by a layer and the services it makes.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) cache: TokenCache,
    pub(crate) classifier: Arc<dyn Classifier>,
    pub(crate) max_replay_body: usize,
    pub(crate) max_inspect_body: usize,
    pub(crate) allow_insecure_http: bool,
    /// `scheme://authority` of the origins that get tokens; empty means every origin.
    pub(crate) origins: Arc<[String]>,
}

impl Settings {
    pub(crate) fn new(cache: TokenCache) -> Self {
        Self {
            cache,
            classifier: Arc::new(DefaultClassifier::default()),
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            max_inspect_body: 8 * 1024,
            allow_insecure_http: false,
            origins: Arc::from([]),
        }
    }

    /// Whether requests to `uri` get a token (relative URIs always do).
    pub(crate) fn covers(&self, uri: &Uri) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => self
                .origins
                .iter()
                .any(|o| origin_matches(o, scheme, authority.as_str())),
            _ => true,
        }
    }
}

fn origin_matches(origin: &str, scheme: &str, authority: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(s, a)| s.eq_ignore_ascii_case(scheme) && a.eq_ignore_ascii_case(authority))
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("cache", &self.cache)
            .field("max_replay_body", &self.max_replay_body)
            .field("max_inspect_body", &self.max_inspect_body)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

macro_rules! settings_setters {
    () => {
        /// Decides which responses mean the token was rejected. Default:
        /// [`DefaultClassifier`](tokenwarden_core::DefaultClassifier) (401, unless the
        /// `WWW-Authenticate` challenge names an error a fresh token cannot fix).
        #[must_use]
        pub fn with_classifier(mut self, classifier: impl tokenwarden_core::Classifier) -> Self {
            self.settings_mut().classifier = std::sync::Arc::new(classifier);
            self
        }

        /// Also treat `403 Forbidden` as a rejected token (with the default classifier).
        #[must_use]
        pub fn with_forbidden_as_rejection(self) -> Self {
            self.with_classifier(
                tokenwarden_core::DefaultClassifier::default().with_forbidden(true),
            )
        }

        /// The largest request body kept for a replay. Default
        /// [`DEFAULT_MAX_REPLAY_BODY`](tokenwarden_core::DEFAULT_MAX_REPLAY_BODY) (64 KiB).
        /// Larger bodies are still sent, once.
        #[must_use]
        pub fn with_max_replay_body(mut self, bytes: usize) -> Self {
            self.settings_mut().max_replay_body = bytes;
            self
        }

        /// How much of a response body a classifier that asked for it gets to see. Default 8 KiB.
        #[must_use]
        pub fn with_max_inspect_body(mut self, bytes: usize) -> Self {
            self.settings_mut().max_inspect_body = bytes;
            self
        }

        /// Allow tokens on plain `http://` requests to hosts that are not loopback. Off by
        /// default: such requests fail with
        /// [`InsecureTransport`](tokenwarden_core::InsecureTransport) before they are sent.
        #[must_use]
        pub fn with_insecure_http(mut self, allow: bool) -> Self {
            self.settings_mut().allow_insecure_http = allow;
            self
        }

        /// Only requests to this origin (`scheme://host[:port]`, e.g. the API's base URL) get
        /// tokens; requests elsewhere, such as the target of a redirect to another host, pass
        /// through untouched. Call it again to add origins. Default: every origin.
        #[must_use]
        pub fn with_origin(mut self, origin: &http::Uri) -> Self {
            let mut origins: Vec<String> = self.settings_mut().origins.to_vec();
            if let (Some(scheme), Some(authority)) = (origin.scheme_str(), origin.authority()) {
                origins.push(format!("{scheme}://{authority}"));
            }
            self.settings_mut().origins = origins.into();
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
