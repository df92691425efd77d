//! What both HTTP layers decide the same way: which responses mean "this token was rejected",
//! whether a request may carry a token at all, and how the outcome is marked on the response.
//!
//! Some 620 lines, 100 of them unit tests and 170 docs of settings a user reads.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, StatusCode};
use tokenwarden_core::{Error, Route, Snapshot, TokenId};
use tokenwarden_origin::{InsecureTransport, Scope};

/// The default cap on a request body kept for a replay: 64 KiB. Why that size, and what
/// happens to a larger body:
/// [docs/tower.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/tower.md).
pub(crate) const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;

/// Put this in a request's extensions to send it without any token header.
///
/// ```
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(tokenwarden_http::SkipToken);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipToken;

/// What the layer did about a rejected token, put in the extensions of the response it
/// returns (only when the first response was a rejection).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The request was rejected with token `rejected` and sent again with a fresh token; the
    /// response is the replay's.
    Replayed {
        /// The token the first attempt carried.
        rejected: TokenId,
    },
    /// A DPoP server asked for its nonce (`use_dpop_nonce`): the request was sent again with
    /// the same token, kept, and a proof carrying the nonce; the response is the replay's.
    WithNonce {
        /// The token both attempts carried.
        token: TokenId,
    },
    /// The response is the rejection itself: the request was not sent again. Unless the
    /// reason says the token was kept ([`NotReplayed::StillRejected`],
    /// [`NotReplayed::RouteRejects`], [`NotReplayed::HeldOff`]) or the answer asked for a
    /// DPoP nonce ([`Verdict::UseNonce`]: the token is kept, the nonce remembered), the token
    /// it carried was still invalidated, so the next request gets a fresh one.
    NotReplayed(NotReplayed),
}

/// Why a rejected request was not sent again.
///
/// Its `Display` says what happened; the cache's error, for
/// [`NoFreshToken`](Self::NoFreshToken), is its [`source`](std::error::Error::source), so an
/// error-chain printer shows each message once.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotReplayed {
    /// Its body is larger than the replay cap.
    #[error("its body is larger than the replay cap")]
    BodyTooLarge,
    /// Its body is a stream of unknown length (or cannot be cloned).
    #[error("its body is a stream that cannot be sent twice")]
    BodyNotReplayable,
    /// No fresh token could be had; the cache's error says why.
    #[error("no fresh token could be had")]
    NoFreshToken(#[source] Error),
    /// Freshly fetched tokens keep being rejected, so the cache holds off replacing this one
    /// for now: the rejection is probably not about the token's age (check its scope and
    /// permissions, and the request).
    #[error("freshly fetched tokens keep being rejected")]
    StillRejected,
    /// This route rejected a freshly fetched token too (or rejects a token that other routes
    /// accept): its `401` is not about the token, which was kept. Check the route's
    /// permissions, or what stands in front of it. See
    /// [`TokenCache::reject`](tokenwarden_core::TokenCache::reject).
    #[error("this route rejects tokens that other requests accept")]
    RouteRejects,
    /// The token works on other requests and was replaced after rejections as often as
    /// [`with_rejection_interval`](tokenwarden_core::TokenCacheBuilder::with_rejection_interval)
    /// allows; it was kept, and this rejection passed on.
    #[error("the token was replaced after rejections as often as the rejection bound allows")]
    HeldOff,
}

impl NotReplayed {
    /// The cache's error, for [`NoFreshToken`](Self::NoFreshToken).
    #[must_use]
    pub fn error(&self) -> Option<&Error> {
        match self {
            NotReplayed::NoFreshToken(error) => Some(error),
            _ => None,
        }
    }
}

/// Two reasons are equal if they are the same reason; two [`NoFreshToken`](Self::NoFreshToken)
/// are equal if their errors say the same.
impl PartialEq for NotReplayed {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (NotReplayed::NoFreshToken(a), NotReplayed::NoFreshToken(b)) => {
                a.to_string() == b.to_string()
            }
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for NotReplayed {}

/// Records on `token` that an API took it, given the status of an answer that was not
/// classified as a rejection: any status but `401` (a `401` the classifier let through says
/// nothing either way). See [`Snapshot::mark_accepted`].
#[inline]
pub(crate) fn record_acceptance(token: &Snapshot, status: StatusCode) {
    if status != StatusCode::UNAUTHORIZED {
        token.mark_accepted();
    }
}

/// What a response says about the token its request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The token was rejected: invalidate it and replay.
    Rejected,
    /// Anything else: hand the response to the caller.
    Accepted,
    /// Undecided from status and headers: call [`Classifier::classify_body`] with the start of
    /// the body.
    InspectBody,
    /// A DPoP server wants a proof with its new nonce (`401` with `WWW-Authenticate: DPoP
    /// error="use_dpop_nonce"`, RFC 9449 §9): send the request again with the **same** token
    /// and a fresh proof. [`Engine::screen`](crate::adapter::Engine::screen) decides it for
    /// a DPoP-bound token before any classifier; a classifier does not return it.
    UseNonce,
}

/// Decides which responses mean the token was rejected.
///
/// The default, [`DefaultClassifier`], follows RFC 6750. Implement this for APIs that signal an
/// expired token otherwise, for example in the body:
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tokenwarden_http::{Classifier, Verdict};
///
/// struct SaysExpired;
///
/// impl Classifier for SaysExpired {
///     fn classify(&self, status: StatusCode, _: &HeaderMap) -> Verdict {
///         match status {
///             StatusCode::UNAUTHORIZED => Verdict::Rejected,
///             StatusCode::BAD_REQUEST => Verdict::InspectBody,
///             _ => Verdict::Accepted,
///         }
///     }
///
///     fn classify_body(&self, _: StatusCode, _: &HeaderMap, body: &[u8]) -> bool {
///         body.windows(7).any(|w| w == b"expired")
///     }
/// }
/// ```
pub trait Classifier: Send + Sync + 'static {
    /// Decides from the status and headers.
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict;

    /// Decides from the first bytes of the body (up to the layer's inspection cap), when
    /// [`classify`](Self::classify) answered [`Verdict::InspectBody`]. `true` means rejected.
    fn classify_body(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        let _ = (status, headers, body);
        false
    }
}

impl<C: Classifier + ?Sized> Classifier for Arc<C> {
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        (**self).classify(status, headers)
    }

    fn classify_body(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        (**self).classify_body(status, headers, body)
    }
}

/// The default rule: a `401` is a rejected token unless its `WWW-Authenticate` challenge names
/// an error other than `invalid_token` (such as `insufficient_scope` or `invalid_request`,
/// which a fresh token cannot fix). A `403` counts the same way only if enabled.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier {
    forbidden_too: bool,
}

impl DefaultClassifier {
    /// Also treat `403 Forbidden` as a rejected token (for APIs that answer 403 to expired
    /// tokens).
    #[must_use]
    pub fn with_forbidden(mut self, enabled: bool) -> Self {
        self.forbidden_too = enabled;
        self
    }
}

impl Classifier for DefaultClassifier {
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        let counts = status == StatusCode::UNAUTHORIZED
            || (self.forbidden_too && status == StatusCode::FORBIDDEN);
        if counts && challenge_allows_refresh(headers) {
            Verdict::Rejected
        } else {
            Verdict::Accepted
        }
    }
}

/// Whether the `WWW-Authenticate` challenges of a response leave "the token is no longer
/// valid" as the explanation: none at all, or none that names an error other than
/// `invalid_token`.
#[must_use]
pub(crate) fn challenge_allows_refresh(headers: &HeaderMap) -> bool {
    headers.get_all(WWW_AUTHENTICATE).iter().all(|value| {
        let Ok(text) = value.to_str() else {
            return true;
        };
        challenge_errors(text).all(|error| error.eq_ignore_ascii_case("invalid_token"))
    })
}

/// Whether a response asks for a DPoP nonce: a `WWW-Authenticate` challenge with
/// `error="use_dpop_nonce"` (RFC 9449 §9), alone or beside other challenges.
pub(crate) fn asks_for_nonce(headers: &HeaderMap) -> bool {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|text| challenge_errors(text).any(|error| error == "use_dpop_nonce"))
}

/// The values of every `error` auth-param in a `WWW-Authenticate` header value
/// (`Bearer realm="x", error="invalid_token", error_description="..."`), across challenges.
pub(crate) fn challenge_errors(value: &str) -> impl Iterator<Item = &str> {
    AuthParams { rest: value }
        .filter_map(|(name, value)| name.eq_ignore_ascii_case("error").then_some(value))
}

/// Iterates `name=value` auth-params, skipping scheme names and token68 values; quoted values
/// are returned without their quotes (escapes are left as they are: error codes have none).
struct AuthParams<'a> {
    rest: &'a str,
}

impl<'a> Iterator for AuthParams<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = self.rest.trim_start_matches([' ', '\t', ',']);
            if s.is_empty() {
                return None;
            }
            let name_end = s.find(['=', ' ', '\t', ',']).unwrap_or(s.len());
            let (name, after) = s.split_at(name_end);
            let after = after.trim_start_matches([' ', '\t']);
            let Some(value) = after.strip_prefix('=').filter(|v| !v.starts_with('=')) else {
                // a scheme name, or a token68 (which may end in '='s): skip it
                self.rest = after.trim_start_matches('=');
                continue;
            };
            let value = value.trim_start_matches([' ', '\t']);
            if let Some(quoted) = value.strip_prefix('"') {
                let mut end = quoted.len();
                let mut escaped = false;
                for (i, c) in quoted.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => {
                            end = i;
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                self.rest = quoted.get(end + 1..).unwrap_or("");
                return Some((name, &quoted[..end]));
            }
            let end = value.find([',', ' ', '\t']).unwrap_or(value.len());
            self.rest = &value[end..];
            return Some((name, &value[..end]));
        }
    }
}

/// What the HTTP layers decide per request, set once: which origins get tokens, how
/// rejections are recognised, and how much of a body is kept or inspected.
///
/// There is no default scope: a policy is made for the origins it covers, or — as a named
/// opt-in — for [`Scope::any_origin`].
///
/// ```
/// use tokenwarden_origin::Scope;
/// use tokenwarden_http::LayerPolicy;
///
/// let policy = LayerPolicy::new(Scope::origin("https://api.example.com")?)
///     .with_max_replay_body(256 * 1024);
/// assert_eq!(policy.admit(Some("https"), Some("api.example.com"), None), Ok(true));
/// // another host, such as a redirect's target: sent untouched, without the token
/// assert_eq!(policy.admit(Some("https"), Some("elsewhere.example.com"), None), Ok(false));
/// # Ok::<_, tokenwarden_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct LayerPolicy {
    scope: Scope,
    classifier: Arc<dyn Classifier>,
    max_replay_body: usize,
    max_inspect_body: usize,
    inspect_timeout: Duration,
    allow_insecure_http: bool,
    route: fn(&str, &str) -> Route,
}

/// How long a classifier that asks for a response's body waits for it by default: 1 s.
pub(crate) const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A scope with the default rules: what a layer's constructor takes when only the scope is
/// given (`TokenLayer::new(cache, scope)`).
impl From<Scope> for LayerPolicy {
    fn from(scope: Scope) -> Self {
        Self::new(scope)
    }
}

/// One origin with the default rules.
impl From<tokenwarden_origin::Origin> for LayerPolicy {
    fn from(origin: tokenwarden_origin::Origin) -> Self {
        Self::new(origin)
    }
}

impl LayerPolicy {
    /// A policy putting tokens on requests to the origins of `scope`, with the default rules.
    pub fn new(scope: impl Into<Scope>) -> Self {
        Self {
            scope: scope.into(),
            classifier: Arc::new(DefaultClassifier::default()),
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            max_inspect_body: 8 * 1024,
            inspect_timeout: DEFAULT_INSPECT_TIMEOUT,
            allow_insecure_http: false,
            route: Route::of,
        }
    }

    /// How requests are grouped into routes for the cache's memory of routes that answer `401`
    /// for reasons other than the token (see
    /// [`TokenCache::reject`](tokenwarden_core::TokenCache::reject)): a function of the
    /// method and the path. Default [`Route::of`], the method and the literal path. Give one
    /// that maps `/orders/123` to `/orders/{id}` when ids are in paths, so that one route
    /// rejecting for another reason is remembered once, not once per id.
    ///
    /// ```
    /// use tokenwarden_core::Route;
    /// use tokenwarden_origin::Scope;
    /// use tokenwarden_http::LayerPolicy;
    ///
    /// fn by_template(method: &str, path: &str) -> Route {
    ///     match path.strip_prefix("/orders/") {
    ///         Some(_) => Route::of(method, "/orders/{id}"),
    ///         None => Route::of(method, path),
    ///     }
    /// }
    /// let policy = LayerPolicy::new(Scope::any_origin()).with_route(by_template);
    /// assert_eq!(policy.route("GET", "/orders/7"), policy.route("GET", "/orders/8"));
    /// ```
    #[must_use]
    pub fn with_route(mut self, route: fn(&str, &str) -> Route) -> Self {
        self.route = route;
        self
    }

    /// The route of a request with this method and path (see
    /// [`with_route`](Self::with_route)).
    #[must_use]
    pub fn route(&self, method: &str, path: &str) -> Route {
        (self.route)(method, path)
    }

    /// Decides which responses mean the token was rejected. Default: [`DefaultClassifier`].
    #[must_use]
    pub fn with_classifier(mut self, classifier: impl Classifier) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// Also treat `403 Forbidden` as a rejected token (with the default classifier).
    #[must_use]
    pub fn with_forbidden_as_rejection(self) -> Self {
        self.with_classifier(DefaultClassifier::default().with_forbidden(true))
    }

    /// The largest request body kept for a replay where keeping costs memory. Default
    /// 64 KiB. Larger bodies are still sent, once.
    #[must_use]
    pub fn with_max_replay_body(mut self, bytes: usize) -> Self {
        self.max_replay_body = bytes;
        self
    }

    /// How much of a response body a classifier that asks for it gets to see. Default 8 KiB.
    #[must_use]
    pub fn with_max_inspect_body(mut self, bytes: usize) -> Self {
        self.max_inspect_body = bytes;
        self
    }

    /// How long the start of a response's body is waited for, when the classifier asks for
    /// it. Default 1 s. When it runs out, the response goes to
    /// the caller as it is — not a rejection — with the bytes read so far still in its body.
    #[must_use]
    pub fn with_inspect_timeout(mut self, timeout: Duration) -> Self {
        self.inspect_timeout = timeout;
        self
    }

    /// Allow tokens on plain `http://` requests to hosts that are not loopback. Off by default:
    /// such requests fail with [`InsecureTransport`] before they are sent.
    #[must_use]
    pub fn with_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Replaces the scope: the origins that get tokens.
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<Scope>) -> Self {
        self.scope = scope.into();
        self
    }

    /// The origins that get tokens.
    #[must_use]
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The classifier.
    #[must_use]
    pub fn classifier(&self) -> &dyn Classifier {
        &*self.classifier
    }

    /// The replay cap, in bytes.
    #[must_use]
    pub fn max_replay_body(&self) -> usize {
        self.max_replay_body
    }

    /// The inspection cap, in bytes.
    #[must_use]
    pub fn max_inspect_body(&self) -> usize {
        self.max_inspect_body
    }

    /// How long the start of a body is waited for when the classifier asks for it.
    #[must_use]
    pub fn inspect_timeout(&self) -> Duration {
        self.inspect_timeout
    }

    /// What to do with a request to this scheme, host and port (`None`: the scheme's
    /// default): `Ok(true)` put the token on, `Ok(false)` send it untouched (it is outside the
    /// scope), or an [`InsecureTransport`] error: it is in scope but the plain-text rule
    /// forbids the token there.
    ///
    /// # Errors
    ///
    /// [`InsecureTransport`] for plain `http`/`ws` to a host that is not loopback (unless
    /// allowed), or a scheme that is neither secure nor plain HTTP.
    pub fn admit(
        &self,
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
    ) -> Result<bool, InsecureTransport> {
        self.scope
            .admit(scheme, host, port, self.allow_insecure_http)
    }

    /// [`admit`](Self::admit) for a request's URI, recognising the common spelling of a
    /// listed origin without parsing ([`Scope::admit_uri`]).
    ///
    /// # Errors
    ///
    /// As [`admit`](Self::admit).
    #[inline]
    pub fn admit_uri(&self, uri: &http::Uri) -> Result<bool, InsecureTransport> {
        self.scope.admit_uri(uri, self.allow_insecure_http)
    }

    /// [`admit`](Self::admit) read off a request's scheme and authority text when that text
    /// is a listed origin's usual spelling; `None` otherwise ([`Scope::admit_spelled`]).
    #[inline]
    #[must_use]
    pub fn admit_spelled(
        &self,
        scheme: &str,
        authority: &str,
    ) -> Option<Result<bool, InsecureTransport>> {
        self.scope
            .admit_spelled(scheme, authority, self.allow_insecure_http)
    }

    /// Whether plain `http` off loopback was allowed.
    #[must_use]
    pub fn allows_insecure_http(&self) -> bool {
        self.allow_insecure_http
    }
}

impl fmt::Debug for LayerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerPolicy")
            .field("max_replay_body", &self.max_replay_body)
            .field("max_inspect_body", &self.max_inspect_body)
            .field("inspect_timeout", &self.inspect_timeout)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tokenwarden_origin::check_transport;

    fn with_challenge(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_dpop_nonce_challenge_is_found_alone_or_beside_others() {
        assert!(!asks_for_nonce(&HeaderMap::new()));
        assert!(!asks_for_nonce(&with_challenge(&[
            r#"DPoP error="invalid_token""#
        ])));
        // A description with a comma and a quoted "error=" does not hide or fake the code.
        assert!(!asks_for_nonce(&with_challenge(&[
            r#"DPoP error="invalid_dpop_proof", error_description="bad, error=use_dpop_nonce""#
        ])));
        assert!(asks_for_nonce(&with_challenge(&[
            r#"DPoP error_description="nonce, please", error="use_dpop_nonce""#
        ])));
        assert!(asks_for_nonce(&with_challenge(&[
            r#"Bearer realm="api""#,
            r#"dpop algs="ES256 EdDSA", error=use_dpop_nonce"#
        ])));
    }

    #[test]
    fn parses_bearer_challenges() {
        let v = r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#;
        assert_eq!(challenge_errors(v).collect::<Vec<_>>(), ["invalid_token"]);
        let v = r#"Basic realm="x", Bearer error=insufficient_scope, scope="a b""#;
        assert_eq!(
            challenge_errors(v).collect::<Vec<_>>(),
            ["insufficient_scope"]
        );
        let v = r#"Bearer error_description="say \"error=x\"", error="invalid_request""#;
        assert_eq!(challenge_errors(v).collect::<Vec<_>>(), ["invalid_request"]);
        assert_eq!(challenge_errors("Negotiate abc123==").count(), 0);
        assert_eq!(challenge_errors(r#"Bearer realm="unterminated"#).count(), 0);
        assert_eq!(challenge_errors("").count(), 0);
    }

    #[test]
    fn default_classification() {
        let c = DefaultClassifier::default();
        let none = HeaderMap::new();
        assert_eq!(
            c.classify(StatusCode::UNAUTHORIZED, &none),
            Verdict::Rejected
        );
        assert_eq!(c.classify(StatusCode::OK, &none), Verdict::Accepted);
        assert_eq!(c.classify(StatusCode::FORBIDDEN, &none), Verdict::Accepted);
        assert_eq!(
            c.with_forbidden(true)
                .classify(StatusCode::FORBIDDEN, &none),
            Verdict::Rejected
        );
        let expired = with_challenge(&[r#"Bearer error="invalid_token""#]);
        assert_eq!(
            c.classify(StatusCode::UNAUTHORIZED, &expired),
            Verdict::Rejected
        );
        let bare = with_challenge(&[r#"Bearer realm="api""#]);
        assert_eq!(
            c.classify(StatusCode::UNAUTHORIZED, &bare),
            Verdict::Rejected
        );
        for other in ["insufficient_scope", "invalid_request"] {
            let h = with_challenge(&[&format!(r#"Bearer realm="api", error="{other}""#)]);
            assert_eq!(
                c.classify(StatusCode::UNAUTHORIZED, &h),
                Verdict::Accepted,
                "{other}"
            );
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let ok = [
            "https://api.example.com/x",
            "http://127.0.0.1:8080/x",
            "http://127.3.4.5/x",
            "http://localhost:3000/",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]:80/",
            "/relative/path",
        ];
        for uri in ok {
            assert!(
                check_transport(&uri.parse().unwrap(), false).is_ok(),
                "{uri}"
            );
        }
        let err =
            check_transport(&"http://api.example.com/pay".parse().unwrap(), false).unwrap_err();
        assert_eq!(err.host, "api.example.com");
        assert!(err.to_string().contains("https"));
        for bad in [
            "http://10.0.0.1/",
            "ws://api.example.com/",
            "wss://api.example.com/",
            "ws://localhost:3000/",
            "ftp://127.0.0.1/",
            "http://127.example.com/",
            "http://[::2]:80/",
            "http://localhost.evil.com/",
            "http://api.localhost/",
            "http://127.0.0.1@evil.example/",
        ] {
            assert!(
                check_transport(&bad.parse().unwrap(), false).is_err(),
                "{bad}"
            );
        }
        assert!(check_transport(&"http://api.example.com/".parse().unwrap(), true).is_ok());
    }
}
