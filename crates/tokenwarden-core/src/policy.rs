//! What both HTTP layers decide the same way: which responses mean "this token was rejected",
//! whether a request may carry a token at all, and how the outcome is marked on the response.

use std::fmt;
use std::sync::Arc;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, StatusCode, Uri};

use crate::TokenId;

/// The default cap on a request body kept for a replay: 64 KiB.
///
/// Typical API bodies (payment, token and JSON RPC requests) are a few KiB, so they all fit,
/// while a thousand requests in flight keep at most 64 MiB for replays. Larger or streaming
/// bodies are still sent, once, and are not replayed.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;

/// Put this in a request's extensions to send it without any token header.
///
/// ```
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(tokenwarden_core::SkipToken);
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
    /// The response is the rejection itself: the request was not sent again. The token it
    /// carried was still invalidated, so the next request gets a fresh one.
    NotReplayed(NotReplayed),
}

/// Why a rejected request was not sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReplayed {
    /// Its body is larger than the replay cap.
    BodyTooLarge,
    /// Its body is a stream of unknown length (or cannot be cloned).
    BodyNotReplayable,
    /// No fresh token could be had; the error says why.
    NoFreshToken(String),
    /// Freshly fetched tokens keep being rejected, so the cache holds off replacing this one
    /// for now: the rejection is probably not about the token's age (check its scope and
    /// permissions, and the request).
    StillRejected,
}

impl fmt::Display for NotReplayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReplayed::BodyTooLarge => f.write_str("its body is larger than the replay cap"),
            NotReplayed::BodyNotReplayable => {
                f.write_str("its body is a stream that cannot be sent twice")
            }
            NotReplayed::NoFreshToken(e) => write!(f, "no fresh token could be had: {e}"),
            NotReplayed::StillRejected => f.write_str("freshly fetched tokens keep being rejected"),
        }
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
}

/// Decides which responses mean the token was rejected.
///
/// The default, [`DefaultClassifier`], follows RFC 6750. Implement this for APIs that signal an
/// expired token otherwise, for example in the body:
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tokenwarden_core::{Classifier, Verdict};
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
pub fn challenge_allows_refresh(headers: &HeaderMap) -> bool {
    headers.get_all(WWW_AUTHENTICATE).iter().all(|value| {
        let Ok(text) = value.to_str() else {
            return true;
        };
        challenge_errors(text).all(|error| error.eq_ignore_ascii_case("invalid_token"))
    })
}

/// The values of every `error` auth-param in a `WWW-Authenticate` header value
/// (`Bearer realm="x", error="invalid_token", error_description="..."`), across challenges.
pub fn challenge_errors(value: &str) -> impl Iterator<Item = &str> {
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

/// A token was about to be sent over plain `http://` to a host that is not loopback.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "refusing to send a token over plain http to `{host}`: use https, or allow it explicitly \
     (with_insecure_http) if this network is trusted"
)]
pub struct InsecureTransport {
    /// The host the request was for.
    pub host: String,
}

/// Whether a request to `uri` may carry a token: `https`, any scheme-less (relative) URI, and
/// plain `http` to loopback hosts are allowed; plain `http` elsewhere only if
/// `allow_insecure_http`.
///
/// # Errors
///
/// [`InsecureTransport`] for plain `http` to a host that is not loopback.
pub fn check_transport(uri: &Uri, allow_insecure_http: bool) -> Result<(), InsecureTransport> {
    let authority = uri.authority().map(|a| a.as_str());
    transport_allowed(uri.scheme_str(), authority, allow_insecure_http)
}

/// [`check_transport`] on a URL's parts, for clients whose URLs are not `http::Uri`s.
///
/// # Errors
///
/// [`InsecureTransport`] for plain `http` to a host that is not loopback.
pub fn transport_allowed(
    scheme: Option<&str>,
    authority: Option<&str>,
    allow_insecure_http: bool,
) -> Result<(), InsecureTransport> {
    if allow_insecure_http || !scheme.is_some_and(|s| s.eq_ignore_ascii_case("http")) {
        return Ok(());
    }
    let authority = authority.unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.find(']') {
        Some(end) if host_port.starts_with('[') => &host_port[..=end],
        _ => host_port.split_once(':').map_or(host_port, |(h, _)| h),
    };
    if is_loopback(host) {
        Ok(())
    } else {
        Err(InsecureTransport {
            host: host.to_owned(),
        })
    }
}

/// What the HTTP layers decide per request, set once: how rejections are recognised, how much
/// of a body is kept or inspected, and which requests may carry a token at all.
///
/// ```
/// use tokenwarden_core::LayerPolicy;
///
/// let policy = LayerPolicy::default()
///     .with_origin(&"https://api.example.com".parse().unwrap())
///     .with_max_replay_body(256 * 1024);
/// assert!(policy.covers(Some("https"), Some("api.example.com")));
/// assert!(!policy.covers(Some("https"), Some("elsewhere.example.com")));
/// ```
#[derive(Clone)]
pub struct LayerPolicy {
    classifier: Arc<dyn Classifier>,
    max_replay_body: usize,
    max_inspect_body: usize,
    allow_insecure_http: bool,
    /// `scheme://authority` of the origins that get tokens; empty means every origin.
    origins: Arc<[String]>,
}

impl Default for LayerPolicy {
    fn default() -> Self {
        Self {
            classifier: Arc::new(DefaultClassifier::default()),
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            max_inspect_body: 8 * 1024,
            allow_insecure_http: false,
            origins: Arc::from([]),
        }
    }
}

impl LayerPolicy {
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
    /// [`DEFAULT_MAX_REPLAY_BODY`] (64 KiB). Larger bodies are still sent, once.
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

    /// Allow tokens on plain `http://` requests to hosts that are not loopback. Off by default:
    /// such requests fail with [`InsecureTransport`] before they are sent.
    #[must_use]
    pub fn with_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Only requests to this origin (`scheme://host[:port]`, e.g. the API's base URL) get
    /// tokens; requests elsewhere, such as the target of a redirect to another host, pass
    /// through untouched. Call it again to add origins. Default: every origin.
    #[must_use]
    pub fn with_origin(mut self, origin: &Uri) -> Self {
        if let (Some(scheme), Some(authority)) = (origin.scheme_str(), origin.authority()) {
            let mut origins = self.origins.to_vec();
            origins.push(format!("{scheme}://{authority}"));
            self.origins = origins.into();
        }
        self
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

    /// Whether a request to this scheme and authority gets a token (relative URLs, with
    /// neither, always do).
    #[must_use]
    pub fn covers(&self, scheme: Option<&str>, authority: Option<&str>) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        let (Some(scheme), Some(authority)) = (scheme, authority) else {
            return true;
        };
        self.origins.iter().any(|origin| {
            origin.split_once("://").is_some_and(|(s, a)| {
                s.eq_ignore_ascii_case(scheme) && a.eq_ignore_ascii_case(authority)
            })
        })
    }

    /// Whether a token may be sent to this scheme and authority ([`transport_allowed`] with
    /// this policy's setting).
    ///
    /// # Errors
    ///
    /// [`InsecureTransport`] for plain `http` to a host that is not loopback, unless allowed.
    pub fn check_transport(
        &self,
        scheme: Option<&str>,
        authority: Option<&str>,
    ) -> Result<(), InsecureTransport> {
        transport_allowed(scheme, authority, self.allow_insecure_http)
    }
}

impl fmt::Debug for LayerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerPolicy")
            .field("max_replay_body", &self.max_replay_body)
            .field("max_inspect_body", &self.max_inspect_body)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

fn is_loopback(host: &str) -> bool {
    const SUFFIX: &str = ".localhost";
    match host.as_bytes().first() {
        Some(b'[') => host
            .get(1..host.len() - 1)
            .and_then(|v6| v6.parse::<std::net::Ipv6Addr>().ok())
            .is_some_and(|ip| ip.is_loopback()),
        Some(b'0'..=b'9') => host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback()),
        _ => {
            host.eq_ignore_ascii_case("localhost")
                || (host.len() > SUFFIX.len()
                    && host.is_char_boundary(host.len() - SUFFIX.len())
                    && host[host.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_challenge(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
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
            "http://api.LOCALHOST:8080/",
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
        assert!(check_transport(&"http://10.0.0.1/".parse().unwrap(), false).is_err());
        assert!(check_transport(&"http://127.example.com/".parse().unwrap(), false).is_err());
        assert!(check_transport(&"http://[::2]:80/".parse().unwrap(), false).is_err());
        assert!(check_transport(&"http://localhost.evil.com/".parse().unwrap(), false).is_err());
        assert!(check_transport(&"http://api.example.com/".parse().unwrap(), true).is_ok());
    }
}
