//! What can go wrong getting a token from a gateway.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokenwarden_core::{BoxError, FetchError};

use crate::redact::Secrets;

/// One code and message a gateway returned with a refusal (BOIPA's `messageCode` /
/// `fieldName`, Sipay's `status_code` / `status_description`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayCode {
    /// The gateway's code (or the field it is about).
    pub code: String,
    /// The gateway's message.
    pub message: String,
}

impl fmt::Display for GatewayCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => write!(f, "{}: {}", self.code, self.message),
            (true, _) => f.write_str(&self.message),
            (_, true) => f.write_str(&self.code),
        }
    }
}

/// Why a gateway did not give a token. Names the gateway, the HTTP status and the gateway's own
/// codes, says whether retrying can help ([`is_retryable`](Self::is_retryable)), and never
/// contains a credential.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The issuer could not be reached (connection, TLS, timeout): no answer came.
    #[error("{gateway}: the token issuer could not be reached; check the base URL and the network")]
    Unreachable {
        /// The gateway.
        gateway: &'static str,
        /// What failed, as the HTTP client said it.
        #[source]
        source: TransportError,
    },
    /// The issuer answered, but its body broke off while it was read (a connection reset, a
    /// read timeout): the answer was lost half way.
    #[error("{gateway}: the token response (HTTP {status}) broke off while it was read")]
    Interrupted {
        /// The gateway.
        gateway: &'static str,
        /// The status of the answer that broke off.
        status: StatusCode,
        /// What failed, as the HTTP client said it.
        #[source]
        source: TransportError,
    },
    /// The issuer answered with an HTTP error status.
    #[error("{gateway}: the token issuer answered HTTP {status}{}", hint(*status))]
    Status {
        /// The gateway.
        gateway: &'static str,
        /// The status.
        status: StatusCode,
        /// When the issuer said to ask again (`Retry-After` on a `429` or `503`); the cache
        /// waits that long (up to its backoff cap) before the next request.
        retry_after: Option<Duration>,
    },
    /// The issuer refused the request with its own codes.
    #[error("{gateway}: the token request was refused (HTTP {status}{}): {}", reference.as_deref().map(|r| format!(", reference {r}")).unwrap_or_default(), list(codes))]
    Refused {
        /// The gateway.
        gateway: &'static str,
        /// The HTTP status (gateways often refuse with 200).
        status: StatusCode,
        /// The gateway's codes and messages.
        codes: Vec<GatewayCode>,
        /// The gateway's reference for the request, if it gave one (BOIPA's `resultId`).
        reference: Option<String>,
        /// Whether the gateway's code says a later attempt can succeed.
        retryable: bool,
    },
    /// The token endpoint refused the request with an OAuth 2.0 error (RFC 6749 §5.2):
    /// `error` and, if given, `error_description` (printed, with every credential the source
    /// sent taken out, should the server echo one).
    /// [`is_retryable`](GatewayError::is_retryable) and
    /// [`is_configuration`](GatewayError::is_configuration) say what to do.
    #[error(
        "{gateway}: the token endpoint refused the request (HTTP {status}, `{error}`{}): {}",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default(),
        oauth_hint(error)
    )]
    OAuth {
        /// The gateway.
        gateway: &'static str,
        /// The HTTP status.
        status: StatusCode,
        /// The `error` code (`invalid_client`, `invalid_scope`, …).
        error: String,
        /// The `error_description`, if any (trimmed to 300 characters).
        description: Option<String>,
    },
    /// The token's `token_type` is not one the source accepts (Bearer, unless others were
    /// allowed; DPoP for a source proving a DPoP key): sending it as another type would be
    /// wrong (RFC 6749 §7.1, RFC 9449 §5). Not retried.
    #[error(
        "{gateway}: the token endpoint issued a `{token_type}` token, not a {expected} one; \
         accept the type on the source and give the cache a presentation that sends it as that \
         type requires (a DPoP source whose server issues Bearer tokens: the server does not \
         bind tokens to the key)"
    )]
    UnsupportedTokenType {
        /// The gateway.
        gateway: &'static str,
        /// The type the source asked for (`Bearer` or `DPoP`).
        expected: &'static str,
        /// The `token_type` the endpoint gave.
        token_type: String,
    },
    /// An authorization server's metadata names another issuer than the one it was fetched
    /// for (RFC 8414 §3.3): its token endpoint is not believed, and no credential is sent.
    #[error(
        "{gateway}: the issuer's metadata names issuer `{named}`, not the one configured; its \
         token endpoint is not used: check the issuer URL"
    )]
    IssuerMismatch {
        /// The gateway.
        gateway: &'static str,
        /// The issuer the metadata named (credentials and query values redacted).
        named: String,
    },
    /// The answer is not what the gateway documents.
    #[error("{gateway}: the token response (HTTP {status}) is malformed: {problem}")]
    Malformed {
        /// The gateway.
        gateway: &'static str,
        /// The HTTP status.
        status: StatusCode,
        /// What is wrong with it.
        problem: String,
    },
    /// The token endpoint answered with a redirect. Token requests never follow one (the
    /// credentials would be sent again, to wherever it points): nothing was re-sent.
    #[error(
        "{gateway}: the token endpoint answered HTTP {status}, a redirect to {target}; token \
         requests never follow redirects (they would re-send the credentials): set the base URL \
         to the issuer's actual address"
    )]
    Redirected {
        /// The gateway.
        gateway: &'static str,
        /// The redirect's status.
        status: StatusCode,
        /// The origin it pointed to (`scheme://host[:port]`, never its path or query), or a
        /// description when there was none.
        target: String,
    },
    /// The answer is larger than the cap.
    #[error("{gateway}: the token response is larger than {limit} bytes; refusing to read it")]
    TooLarge {
        /// The gateway.
        gateway: &'static str,
        /// The cap.
        limit: usize,
    },
}

fn hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => ": the credentials were rejected; fix them, retrying cannot help",
        408 | 429 => ": try again later",
        500..=599 => {
            ": the issuer failed; it will be asked again shortly (after its Retry-After, if it \
             gave one)"
        }
        _ => "",
    }
}

/// What an RFC 6749 §5.2 error code means for the next attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OAuthKind {
    /// The client, its grant or its access was refused: not retried.
    Credentials,
    /// The request itself is wrong: not retried, fix the configuration.
    Configuration,
    /// The issuer failed: asked again on the cache's short recovery beat while callers wait.
    Transient,
    /// A code outside the RFC's list: judged by the status.
    Other,
}

/// One table for every code: its kind and what to do about it.
fn oauth_code(error: &str) -> (OAuthKind, &'static str) {
    const SEE_DOCS: &str = "see the endpoint's documentation for this code";
    match error {
        "invalid_client" | "unauthorized_client" => (
            OAuthKind::Credentials,
            "the client credentials were rejected; fix them, retrying cannot help",
        ),
        "invalid_grant" => (
            OAuthKind::Credentials,
            "the grant was rejected; fix it, retrying cannot help",
        ),
        "access_denied" => (OAuthKind::Credentials, SEE_DOCS),
        "invalid_scope" => (
            OAuthKind::Configuration,
            "a requested scope is not allowed for this client; fix the scope",
        ),
        // RFC 8707 §2.
        "invalid_target" => (
            OAuthKind::Configuration,
            "the resource (audience) requested is not known to the issuer or not allowed for \
             this client; fix the resource given with `with_resource`",
        ),
        "invalid_request" => (
            OAuthKind::Configuration,
            "the request is missing or repeats a parameter; fix the configuration",
        ),
        "unsupported_grant_type" => (
            OAuthKind::Configuration,
            "the endpoint does not take this grant type; fix the configuration",
        ),
        "temporarily_unavailable" | "server_error" => (
            OAuthKind::Transient,
            "the issuer failed; it will be asked again shortly",
        ),
        // RFC 9449 §8: asked again at once with the nonce; asked twice, the nonce changed
        // meanwhile (replicas of the server, a rotation), and a later request carries it.
        "use_dpop_nonce" => (
            OAuthKind::Transient,
            "the server wants its DPoP nonce; the next request carries the newest one",
        ),
        "invalid_dpop_proof" => (
            OAuthKind::Configuration,
            "the server refused the DPoP proof: check the key's algorithm is one the server \
             takes, the token URL is the one the server knows itself by, and the clock",
        ),
        _ => (OAuthKind::Other, SEE_DOCS),
    }
}

/// Whether an error status says a later attempt can succeed: a 5xx, a timeout, too many
/// requests.
fn status_retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 429)
}

fn oauth_hint(error: &str) -> &'static str {
    oauth_code(error).1
}

fn list(codes: &[GatewayCode]) -> String {
    if codes.is_empty() {
        return "no reason given".to_owned();
    }
    codes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl GatewayError {
    /// Whether a later attempt can succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Unreachable { .. }
            | GatewayError::Interrupted { .. }
            | GatewayError::Malformed { .. }
            | GatewayError::TooLarge { .. } => true,
            GatewayError::Status { status, .. } => status_retryable(*status),
            GatewayError::Refused { retryable, .. } => *retryable,
            GatewayError::OAuth { error, status, .. } => match oauth_code(error).0 {
                OAuthKind::Transient => true,
                OAuthKind::Credentials | OAuthKind::Configuration => false,
                OAuthKind::Other => status_retryable(*status),
            },
            GatewayError::Redirected { .. }
            | GatewayError::UnsupportedTokenType { .. }
            | GatewayError::IssuerMismatch { .. } => false,
        }
    }

    /// The gateway's name.
    #[must_use]
    pub fn gateway(&self) -> &'static str {
        match self {
            GatewayError::Unreachable { gateway, .. }
            | GatewayError::Interrupted { gateway, .. }
            | GatewayError::Redirected { gateway, .. }
            | GatewayError::Status { gateway, .. }
            | GatewayError::Refused { gateway, .. }
            | GatewayError::OAuth { gateway, .. }
            | GatewayError::UnsupportedTokenType { gateway, .. }
            | GatewayError::IssuerMismatch { gateway, .. }
            | GatewayError::Malformed { gateway, .. }
            | GatewayError::TooLarge { gateway, .. } => gateway,
        }
    }

    /// The HTTP status of the answer, if there was one.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GatewayError::Status { status, .. }
            | GatewayError::Redirected { status, .. }
            | GatewayError::Refused { status, .. }
            | GatewayError::OAuth { status, .. }
            | GatewayError::Interrupted { status, .. }
            | GatewayError::Malformed { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl GatewayError {
    /// Whether the request itself is wrong rather than the credentials or the issuer's
    /// health — an OAuth `invalid_scope`, `invalid_target`, `invalid_request` or
    /// `unsupported_grant_type`, or a token type the source was not told to accept: fix the
    /// configuration (not retried in a loop). Such an error reaches callers as
    /// [`tokenwarden_core::Error::Configuration`].
    #[must_use]
    pub fn is_configuration(&self) -> bool {
        match self {
            GatewayError::OAuth { error, .. } => oauth_code(error).0 == OAuthKind::Configuration,
            GatewayError::UnsupportedTokenType { .. } => true,
            _ => false,
        }
    }

    /// Whether the issuer answered with a failure of its own and said nothing of when to come
    /// back: a `5xx` without `Retry-After`, or an OAuth `server_error` or
    /// `temporarily_unavailable` (or an unknown code on a `5xx`). The cache asks again on its
    /// short recovery beat while callers wait ([`FetchError::with_fast_retry`]).
    fn issuer_failed(&self) -> bool {
        match self {
            GatewayError::Status {
                status,
                retry_after,
                ..
            } => status.is_server_error() && retry_after.is_none(),
            GatewayError::OAuth { error, status, .. } => match oauth_code(error).0 {
                OAuthKind::Transient => true,
                OAuthKind::Other => status.is_server_error(),
                OAuthKind::Credentials | OAuthKind::Configuration => false,
            },
            _ => false,
        }
    }

    /// This error with `secrets` taken out of every text built from the issuer's answer (and
    /// the transport's text), in whatever field it is.
    pub(crate) fn redacted(mut self, secrets: &Secrets) -> Self {
        match &mut self {
            GatewayError::Unreachable { source, .. } | GatewayError::Interrupted { source, .. } => {
                secrets.redact_in(&mut source.text);
            }
            GatewayError::Refused {
                codes, reference, ..
            } => {
                for code in codes {
                    secrets.redact_in(&mut code.code);
                    secrets.redact_in(&mut code.message);
                }
                if let Some(reference) = reference {
                    secrets.redact_in(reference);
                }
            }
            GatewayError::OAuth {
                error, description, ..
            } => {
                secrets.redact_in(error);
                if let Some(description) = description {
                    secrets.redact_in(description);
                }
            }
            GatewayError::UnsupportedTokenType { token_type, .. } => {
                secrets.redact_in(token_type);
            }
            GatewayError::IssuerMismatch { named, .. } => secrets.redact_in(named),
            GatewayError::Malformed { problem, .. } => secrets.redact_in(problem),
            GatewayError::Redirected { target, .. } => secrets.redact_in(target),
            GatewayError::Status { .. } | GatewayError::TooLarge { .. } => {}
        }
        self
    }

    /// The transport failure under an [`Unreachable`](Self::Unreachable) or
    /// [`Interrupted`](Self::Interrupted), for [`TransportError::is_timeout`] and the like.
    #[must_use]
    pub fn transport(&self) -> Option<&TransportError> {
        match self {
            GatewayError::Unreachable { source, .. } | GatewayError::Interrupted { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// A transport failure between a token source and its issuer: the HTTP client's error, kept
/// whole for [`is_timeout`](Self::is_timeout), [`is_connect`](Self::is_connect) or a downcast
/// ([`get_ref`](Self::get_ref)), and its text with the endpoint's secrets taken out.
///
/// Its `Display` is that text: the client's message and its causes, each once. It has no
/// `source` of its own (the text already holds the chain, scrubbed).
#[derive(Clone)]
pub struct TransportError {
    text: String,
    error: Arc<dyn StdError + Send + Sync>,
}

impl TransportError {
    /// `error`, shown as `text` (which must hold no secret).
    pub(crate) fn new(error: BoxError, text: String) -> Self {
        Self {
            text,
            error: Arc::from(error),
        }
    }

    /// The text of `error` and every cause under it, joined with `": "`, each once.
    pub(crate) fn describe(error: &(dyn StdError + 'static)) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let more = cause.to_string();
            // Clients often repeat their cause in their own message.
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = cause.source();
        }
        text
    }

    /// Every error of the chain, from the client's own down.
    fn chain(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        let first: &(dyn StdError + 'static) = &*self.error;
        std::iter::successors(Some(first), |&e| e.source())
    }

    /// Whether the client gave up waiting: connecting, or for an answer.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.chain().any(|e| {
            #[cfg(feature = "reqwest")]
            if e.downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_timeout)
            {
                return true;
            }
            e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        })
    }

    /// Whether no connection could be made (refused, no route, DNS, TLS handshake).
    #[must_use]
    pub fn is_connect(&self) -> bool {
        self.chain().any(|e| {
            #[cfg(feature = "reqwest")]
            if e.downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_connect)
            {
                return true;
            }
            e.downcast_ref::<io::Error>().is_some_and(|e| {
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                        | io::ErrorKind::AddrNotAvailable
                )
            })
        })
    }

    /// The client's error itself, to downcast (`reqwest::Error`, `hyper_util`'s, `io::Error`).
    #[must_use]
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TransportError").field(&self.text).finish()
    }
}

impl StdError for TransportError {}

impl From<GatewayError> for FetchError {
    fn from(error: GatewayError) -> Self {
        let retry_after = match &error {
            GatewayError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        let fast_retry = error.issuer_failed();
        let fetch_error = if error.is_retryable() {
            let transient = FetchError::transient(error);
            if fast_retry {
                transient.with_fast_retry()
            } else {
                transient
            }
        } else if error.is_configuration() {
            FetchError::configuration(error)
        } else {
            FetchError::rejected(error)
        };
        match retry_after {
            Some(after) => fetch_error.with_retry_after(after),
            None => fetch_error,
        }
    }
}
