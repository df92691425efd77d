//! The settings both layers offer, generated once.

/// Generates the settings of a layer or middleware that holds an [`Engine`](crate::Engine):
/// the same names, types and docs on every adapter. The type must have
/// `fn engine(&self) -> &Engine` and `fn engine_mut(&mut self) -> &mut Engine`.
#[doc(hidden)]
#[macro_export]
macro_rules! __layer_settings {
    () => {
        /// The cache tokens come from (`None` for a keyed layer, whose requests' keys choose).
        #[must_use]
        pub fn cache(&self) -> Option<&$crate::__private::TokenCache> {
            self.engine().cache()
        }

        /// The policy: scope, classifier, body caps, inspection time.
        #[must_use]
        pub fn policy(&self) -> &$crate::LayerPolicy {
            self.engine().policy()
        }

        /// Replaces the whole [`LayerPolicy`](tokenwarden_http::LayerPolicy), scope included.
        #[must_use]
        pub fn with_policy(mut self, policy: $crate::LayerPolicy) -> Self {
            self.engine_mut().edit_policy(|_| policy);
            self
        }

        /// Decides which responses mean the token was rejected. Default:
        /// [`DefaultClassifier`](tokenwarden_http::DefaultClassifier) (401, unless the
        /// `WWW-Authenticate` challenge names an error a fresh token cannot fix).
        #[must_use]
        pub fn with_classifier(mut self, classifier: impl $crate::Classifier) -> Self {
            self.engine_mut()
                .edit_policy(|p| p.with_classifier(classifier));
            self
        }

        /// Also treat `403 Forbidden` as a rejected token (with the default classifier).
        #[must_use]
        pub fn with_forbidden_as_rejection(mut self) -> Self {
            self.engine_mut()
                .edit_policy(|p| p.with_forbidden_as_rejection());
            self
        }

        /// The largest request body kept for a replay. Default
        /// [`DEFAULT_MAX_REPLAY_BODY`](tokenwarden_http::DEFAULT_MAX_REPLAY_BODY) (64 KiB). A larger
        /// body is still sent, once; if it is rejected the caller gets the rejection, marked
        /// [`NotReplayed::BodyTooLarge`](tokenwarden_http::NotReplayed::BodyTooLarge).
        #[must_use]
        pub fn with_max_replay_body(mut self, bytes: usize) -> Self {
            self.engine_mut()
                .edit_policy(|p| p.with_max_replay_body(bytes));
            self
        }

        /// How requests are grouped into routes for the memory of routes that answer `401`
        /// for other reasons than the token: see
        /// [`LayerPolicy::with_route`](tokenwarden_http::LayerPolicy::with_route).
        #[must_use]
        pub fn with_route(mut self, route: fn(&str, &str) -> ::tokenwarden_core::Route) -> Self {
            self.engine_mut().edit_policy(|p| p.with_route(route));
            self
        }

        /// How much of a response body a classifier that asks for it gets to see. Default
        /// 8 KiB.
        #[must_use]
        pub fn with_max_inspect_body(mut self, bytes: usize) -> Self {
            self.engine_mut()
                .edit_policy(|p| p.with_max_inspect_body(bytes));
            self
        }

        /// How long the start of a body is waited for when the classifier asks for it.
        /// Default [`DEFAULT_INSPECT_TIMEOUT`](tokenwarden_http::DEFAULT_INSPECT_TIMEOUT) (1 s); when it
        /// runs out, the response goes to the caller as it is, the bytes read still in it.
        #[must_use]
        pub fn with_inspect_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.engine_mut()
                .edit_policy(|p| p.with_inspect_timeout(timeout));
            self
        }

        /// Allow tokens on plain `http://` requests to in-scope hosts that are not loopback.
        /// Off by default: such requests fail with
        /// [`InsecureTransport`](tokenwarden_origin::InsecureTransport) before they are sent.
        /// Only for a network you trust end to end: anyone on the path reads the token.
        #[must_use]
        pub fn with_insecure_http(mut self, allow: bool) -> Self {
            self.engine_mut()
                .edit_policy(|p| p.with_insecure_http(allow));
            self
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use tokenwarden_core::TokenCache;
    pub use tokenwarden_origin::InsecureTransport;
}
