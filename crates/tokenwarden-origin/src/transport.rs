//! The plain-text rule: where a token (or a credential) may be sent over which scheme.

use http::Uri;

use crate::origin::*;

/// A token was about to be sent where the plain-text rule forbids it: over `http` to a host
/// that is not loopback (unless allowed), or over a scheme that is neither `http` nor `https`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to send a token over `{scheme}` to `{host}`: tokens go over https, and over plain \
     http only to loopback unless allowed explicitly (with_insecure_http) on a trusted network"
)]
pub struct InsecureTransport {
    /// The scheme of the request.
    pub scheme: String,
    /// The host the request was for.
    pub host: String,
}

/// The plain-text rule: `https` anywhere; `http` to loopback hosts, or anywhere if
/// `allow_insecure`; no other scheme.
///
/// # Errors
///
/// [`InsecureTransport`] when the rule forbids it.
pub fn transport_allowed(
    scheme: &str,
    host: &str,
    allow_insecure: bool,
) -> Result<(), InsecureTransport> {
    match Scheme::parse(scheme) {
        Some(s) if s.is_secure() => Ok(()),
        Some(_) if allow_insecure || is_loopback(host) => Ok(()),
        _ => Err(InsecureTransport {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_owned(),
        }),
    }
}

/// [`transport_allowed`] for an absolute URI. A relative URI has no transport to judge and
/// passes.
///
/// # Errors
///
/// [`InsecureTransport`] when the rule forbids it.
pub fn check_transport(uri: &Uri, allow_insecure: bool) -> Result<(), InsecureTransport> {
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) => transport_allowed(scheme, host, allow_insecure),
        (Some(scheme), None) => Err(InsecureTransport {
            scheme: scheme.to_owned(),
            host: String::new(),
        }),
        // An authority with no scheme (a CONNECT target) goes in plain text.
        (None, Some(host)) => transport_allowed("http", host, allow_insecure),
        (None, None) => Ok(()),
    }
}
