//! Errors of the token cache.

use std::time::Duration;

use http::HeaderName;

use crate::FetchError;

/// Why the cache could not hand out a token.
///
/// Cloneable, because one failed fetch is reported to every caller that waited for it.
/// Never contains a secret. [`Error::is_retryable`] says whether trying again later can help.
///
/// Its `Display` says what this error is; what caused it is its
/// [`source`](std::error::Error::source), so a printer that walks the chain (`anyhow`'s `{:#}`,
/// `tracing`'s error fields, [`Error::chain`]) shows every message once.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The issuer rejected the credentials. Retrying with the same credentials cannot help:
    /// fix the configuration.
    #[error(
        "the token issuer rejected the credentials; retrying cannot help, check the credentials"
    )]
    Rejected(#[source] FetchError),
    /// The issuer refused the token request as misconfigured (a scope, a resource, a grant
    /// type or a parameter it does not take), not the credentials. Retrying cannot help until
    /// the configuration is fixed.
    #[error(
        "the token request was refused as misconfigured: check the scope, resource, grant type \
         and parameters the source sends"
    )]
    Configuration(#[source] FetchError),
    /// A fetch failed in a way a later attempt may not.
    #[error("token fetch failed; it will be retried with backoff")]
    Fetch(#[source] FetchError),
    /// The source did not answer within the fetch timeout.
    #[error("token fetch timed out after {0:?}; the issuer is slow or unreachable")]
    Timeout(Duration),
    /// The source returned a token that is expired, or would be within the clock-skew
    /// margin, by the time it arrived.
    #[error(
        "the token source returned a token that is already expired (stated lifetime {lifetime:?}, \
         clock-skew margin {skew:?}); check the issuer's clock and the expiry parsing, or lower the margin"
    )]
    AlreadyExpired {
        /// The lifetime the issuer stated, counted from when the fetch was sent.
        lifetime: Duration,
        /// The configured clock-skew margin.
        skew: Duration,
    },
    /// The token contains bytes that cannot be sent in an HTTP header.
    #[error(
        "the token cannot be sent in header `{header}`: it contains characters not allowed in HTTP headers"
    )]
    InvalidHeaderValue {
        /// The header the presentation tried to fill.
        header: HeaderName,
    },
    /// The token the issuer returned is not one that can be sent as it is: it is empty, or has
    /// a control, non-ASCII or invisible character (a TAB, a no-break or zero-width space), or
    /// one outside the bearer alphabet. Names the problem, never the value.
    #[error(
        "the token source returned a malformed token: {0}; check the issuer and the token field read"
    )]
    MalformedToken(TokenProblem),
    /// The token source panicked. This is a bug in the source; the cache keeps working.
    #[error("the token source panicked; this is a bug in the source")]
    SourcePanicked,
    /// The fetch was cancelled before it finished (its runtime shut down).
    #[error("the token fetch was cancelled before it finished (its runtime shut down)")]
    Cancelled,
    /// Recent attempts failed and the cache will not call the issuer again before
    /// `retry_in` has passed; `last` says what failed.
    #[error(
        "not asking the token issuer again for another {retry_in:?} after {failures} failure(s)"
    )]
    BackingOff {
        /// How long until the next attempt is allowed.
        retry_in: Duration,
        /// Failures in a row so far.
        failures: u32,
        /// The failure that caused the wait.
        #[source]
        last: Box<Error>,
    },
    /// No Tokio runtime is running on this thread.
    #[error(
        "tokenwarden needs a Tokio runtime (with time enabled) to fetch tokens; call it from within one"
    )]
    NoRuntime,
    /// A keyed cache has no cache for this key: it was never registered (or was removed) and
    /// there is no factory to make one. Never served another key's token instead.
    #[error("no token cache for {key}: register it, or give the keyed cache a factory")]
    UnknownKey {
        /// The key's display-safe label.
        key: String,
    },
    /// A DPoP proof for the request could not be made (RFC 9449): the request was not sent.
    #[error("no DPoP proof could be made for the request: {reason}")]
    DpopProof {
        /// Why (never a key or a token).
        reason: String,
    },
    /// A keyed cache's factory (or a registration) gave settings that cannot work for this key.
    #[error("the token cache for {key} could not be made")]
    KeyConfig {
        /// The key's display-safe label.
        key: String,
        /// What is wrong with the settings.
        #[source]
        source: ConfigError,
    },
}

impl Error {
    /// Whether trying again later can succeed (`false` for rejected credentials, invalid tokens
    /// and bugs).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Fetch(_)
            | Error::Timeout(_)
            | Error::Cancelled
            | Error::AlreadyExpired { .. } => true,
            Error::BackingOff { last, .. } => last.is_retryable(),
            Error::Rejected(_)
            | Error::Configuration(_)
            | Error::InvalidHeaderValue { .. }
            | Error::MalformedToken(_)
            | Error::SourcePanicked
            | Error::NoRuntime
            | Error::UnknownKey { .. }
            | Error::DpopProof { .. }
            | Error::KeyConfig { .. } => false,
        }
    }

    /// Whether the issuer rejected the credentials (directly or as the reason for a backoff).
    #[must_use]
    pub fn is_rejected(&self) -> bool {
        match self {
            Error::Rejected(_) => true,
            Error::BackingOff { last, .. } => last.is_rejected(),
            _ => false,
        }
    }

    /// Whether the issuer refused the request as misconfigured (directly or as the reason for
    /// a backoff): fix the configuration, not the credentials.
    #[must_use]
    pub fn is_configuration(&self) -> bool {
        match self {
            Error::Configuration(_) => true,
            Error::BackingOff { last, .. } => last.is_configuration(),
            _ => false,
        }
    }

    /// Every message of the chain, joined with `": "`: this error's, then its sources', each
    /// once. For logs that take one string.
    #[must_use]
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(error) = source {
            text.push_str(": ");
            text.push_str(&error.to_string());
            source = error.source();
        }
        text
    }

    /// The [`FetchError`] the source returned, if this error came from one.
    #[must_use]
    pub fn fetch_error(&self) -> Option<&FetchError> {
        match self {
            Error::Rejected(e) | Error::Configuration(e) | Error::Fetch(e) => Some(e),
            Error::BackingOff { last, .. } => last.fetch_error(),
            _ => None,
        }
    }
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        if e.is_retryable() {
            Error::Fetch(e)
        } else if e.is_configuration() {
            Error::Configuration(e)
        } else {
            Error::Rejected(e)
        }
    }
}

/// A configuration value that cannot work.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is out of its range.
    #[error("invalid setting `{name}`: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header template lacks the `{{token}}` placeholder or has it more than once.
    #[error("header template for `{header}` must contain `{{token}}` exactly once")]
    Template {
        /// The header the template is for.
        header: HeaderName,
    },
    /// An origin (of a token scope) that cannot be used. Printed with any credentials or
    /// query values redacted.
    #[error("`{origin}` is not a usable origin: {problem}")]
    Origin {
        /// The text given, redacted.
        origin: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A template's fixed text cannot be sent in an HTTP header.
    #[error("header template for `{header}` contains characters not allowed in HTTP headers")]
    TemplateValue {
        /// The header the template is for.
        header: HeaderName,
    },
}

/// What is wrong with a token: the kind of character and its byte position (after trimming),
/// never the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenProblem {
    /// Nothing is left after trimming surrounding whitespace.
    #[error("it is empty (or only whitespace)")]
    Empty,
    /// A control character (TAB, CR, LF, NUL, DEL, …) inside the token.
    #[error("it has a control character at byte {at}")]
    Control {
        /// The byte position.
        at: usize,
    },
    /// A space inside the token.
    #[error("it has a space at byte {at}")]
    Space {
        /// The byte position.
        at: usize,
    },
    /// A character outside ASCII (a no-break space, a zero-width space, any letter outside
    /// ASCII).
    #[error("it has a non-ASCII character (such as a no-break or zero-width space) at byte {at}")]
    NonAscii {
        /// The byte position.
        at: usize,
    },
    /// A visible character outside the `b64token` alphabet a `Bearer` header requires.
    #[error(
        "it has a character outside the RFC 6750 bearer alphabet at byte {at} (if the API \
         accepts such tokens, set the presentation's token charset to Visible)"
    )]
    NotB64Token {
        /// The byte position.
        at: usize,
    },
}
