//! What can go wrong getting a token from a gateway.

use std::fmt;

use http::StatusCode;
use tokenwarden_core::FetchError;

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
    /// The issuer could not be reached (connection, TLS, timeout).
    #[error(
        "{gateway}: the token issuer could not be reached ({reason}); check the base URL and the network"
    )]
    Unreachable {
        /// The gateway.
        gateway: &'static str,
        /// What failed.
        reason: String,
    },
    /// The issuer answered with an HTTP error status.
    #[error("{gateway}: the token issuer answered HTTP {status}{}", hint(*status))]
    Status {
        /// The gateway.
        gateway: &'static str,
        /// The status.
        status: StatusCode,
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
        500..=599 => ": the issuer failed; it will be retried with backoff",
        _ => "",
    }
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
            | GatewayError::Malformed { .. }
            | GatewayError::TooLarge { .. } => true,
            GatewayError::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 408 | 429)
            }
            GatewayError::Refused { retryable, .. } => *retryable,
            GatewayError::Redirected { .. } => false,
        }
    }

    /// The gateway's name.
    #[must_use]
    pub fn gateway(&self) -> &'static str {
        match self {
            GatewayError::Unreachable { gateway, .. }
            | GatewayError::Redirected { gateway, .. }
            | GatewayError::Status { gateway, .. }
            | GatewayError::Refused { gateway, .. }
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
            | GatewayError::Malformed { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<GatewayError> for FetchError {
    fn from(error: GatewayError) -> Self {
        if error.is_retryable() {
            FetchError::transient(error)
        } else {
            FetchError::rejected(error)
        }
    }
}
