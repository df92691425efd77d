//! Redirects that keep tokens where they belong.
//!
//! reqwest follows redirects inside the client, below every middleware, so the client itself
//! must not follow a redirect that leaves the origin (the rule: docs/security.md).

use std::fmt;

use reqwest::Url;
use reqwest::redirect::{Attempt, Policy};

/// How many same-origin redirects [`redirect_policy`] follows before it fails.
pub const MAX_REDIRECTS: usize = 10;

/// A redirect policy that follows a redirect only within the origin the request was sent to
/// (same scheme, host and port), at most [`MAX_REDIRECTS`] times. A redirect that would leave
/// it is **not followed**: the caller gets the `3xx` response itself, and nothing is sent to
/// the other host.
///
/// ```
/// let client = reqwest::Client::builder()
///     .redirect(tokenwarden_reqwest::redirect_policy())
///     .build()?;
/// # let _ = client;
/// # Ok::<_, reqwest::Error>(())
/// ```
#[must_use]
pub fn redirect_policy() -> Policy {
    Policy::custom(decide)
}

fn decide(attempt: Attempt<'_>) -> reqwest::redirect::Action {
    let same_origin = attempt
        .previous()
        .first()
        .is_some_and(|first| same_origin(first, attempt.url()));
    if !same_origin {
        attempt.stop()
    } else if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error(TooManyRedirects)
    } else {
        attempt.follow()
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[derive(Debug)]
struct TooManyRedirects;

impl fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "more than {MAX_REDIRECTS} redirects")
    }
}

impl std::error::Error for TooManyRedirects {}

/// A `reqwest::ClientBuilder` with [`redirect_policy`]: the client to put under a
/// [`TokenMiddleware`](crate::TokenMiddleware). Anything else can still be set on it. It speaks
/// `https` with feature `rustls` (on by default) or any TLS backend of reqwest; with none, the
/// middleware refuses `https` requests in scope ([`TlsMissing`](crate::TlsMissing)).
///
/// ```
/// use std::time::Duration;
///
/// let client = tokenwarden_reqwest::client_builder()
///     .connect_timeout(Duration::from_secs(5))
///     .build()?;
/// # let _ = client;
/// # Ok::<_, reqwest::Error>(())
/// ```
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().redirect(redirect_policy())
}

/// A response came from outside the token's scope, or over plain text: the HTTP client
/// followed a redirect there below the middleware, so the request's token headers may have
/// gone with it. The response is withheld.
///
/// Build the client with [`client_builder`] (or [`redirect_policy`], or
/// `redirect::Policy::none()`) so that it never follows such a redirect.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "the response came from {to}, {}: the HTTP client followed a redirect there and may have \
     sent the token headers with it; build the client with tokenwarden_reqwest::client_builder() \
     (or redirect_policy()) so that it never follows a redirect out of the scope",
    if *.insecure { "over plain text to a host that is not loopback" } else { "outside the token's scope" }
)]
#[non_exhaustive]
pub struct LeftScope {
    /// The origin the response came from (`scheme://host:port`, nothing more).
    pub to: String,
    /// Whether it was plain text off loopback (rather than out of scope).
    pub insecure: bool,
}

impl LeftScope {
    pub(crate) fn new(url: &Url, insecure: bool) -> Self {
        let to = url.as_str().parse::<http::Uri>().map_or_else(
            |_| "an unreadable URL".to_owned(),
            |uri| tokenwarden_origin::Origin::describe(&uri),
        );
        Self { to, insecure }
    }
}
