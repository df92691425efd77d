//! Where tokens come from.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Token;

/// A boxed error, as sources produce them.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Fetches a fresh token from an issuer.
///
/// The cache calls [`fetch`](TokenSource::fetch) from a task of its own, under a timeout,
/// with at most one call in flight (in shared mode) and with backoff after failures, so a
/// source only has to make one honest attempt. A panic in a source is caught and reported as
/// [`Error::SourcePanicked`](crate::Error::SourcePanicked).
///
/// Closures returning a future implement it:
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_core::{FetchError, Token, TokenSource};
///
/// let source = || async {
///     // call the issuer here
///     Ok::<_, FetchError>(Token::new("abc").with_expires_in(Duration::from_secs(60)))
/// };
/// fn takes(_: impl TokenSource) {}
/// takes(source);
/// ```
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches one fresh token.
    ///
    /// # Errors
    ///
    /// A [`FetchError`] saying what failed and whether retrying can help.
    async fn fetch(&self) -> Result<Token, FetchError>;
}

#[async_trait]
impl<F, Fut> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, FetchError>> + Send + 'static,
{
    async fn fetch(&self) -> Result<Token, FetchError> {
        (self)().await
    }
}

/// Why a [`TokenSource`] could not produce a token, and whether retrying can help.
///
/// Its `Display` is the underlying error's; sources must not put secrets in it.
#[derive(Clone)]
pub struct FetchError {
    kind: Kind,
    retry_after: Option<Duration>,
    fast_retry: bool,
    probe: Option<Probe>,
    inner: Arc<dyn StdError + Send + Sync + 'static>,
}

/// What a [`FetchError`] says about the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Transient,
    Rejected,
    Configuration,
}

/// A cheap check of whether an issuer that failed answers again, sending no credentials —
/// for example a bare `GET` of its endpoint that gets any answer but a `5xx` or `429`.
///
/// Attached to a transient [`FetchError`] with [`FetchError::with_probe`] — only where a
/// probe can tell: the issuer could not be reached at all, not where it answered with an error
/// (a bare request would reach it and prove nothing). How often the cache runs it
/// ([`with_recovery_probe`](crate::TokenCacheBuilder::with_recovery_probe)) and what follows when
/// it answers `true`: [docs/guarantees.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md) ("Recovery after an outage").
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_core::{FetchError, Probe};
///
/// let probe = Probe::new(|| async {
///     // e.g. connect to the issuer, or GET its endpoint without credentials
///     true
/// });
/// let down = FetchError::transient("the issuer could not be reached").with_probe(probe);
/// assert!(down.probe().is_some());
/// ```
#[derive(Clone)]
pub struct Probe(Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>);

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Probe {
    /// A probe from a function returning a future that tells whether the issuer answers.
    pub fn new<F, Fut>(probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(probe())))
    }

    /// Runs the probe once.
    pub async fn run(&self) -> bool {
        (self.0)().await
    }
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Probe")
    }
}

impl FetchError {
    /// A failure a later attempt may not see: a timeout, a 5xx, a reset connection,
    /// a malformed body from a proxy. The cache retries with backoff.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::of(Kind::Transient, error.into())
    }

    fn of(kind: Kind, error: BoxError) -> Self {
        Self {
            kind,
            retry_after: None,
            fast_retry: false,
            probe: None,
            inner: Arc::from(error),
        }
    }

    /// The issuer rejected the credentials (or the request token): retrying with the same
    /// credentials cannot succeed. The cache reports it and holds further attempts off for
    /// a few seconds ([`with_rejection_hold`](crate::TokenCacheBuilder::with_rejection_hold)).
    pub fn rejected(error: impl Into<BoxError>) -> Self {
        Self::of(Kind::Rejected, error.into())
    }

    /// The issuer refused the request as misconfigured — a scope, a resource, a grant type or
    /// a parameter it does not take (OAuth 2.0 `invalid_scope`, `invalid_target`,
    /// `invalid_request`, `unsupported_grant_type`) — not the credentials: retrying cannot
    /// succeed until the configuration is fixed. Held off like a rejection
    /// ([`with_rejection_hold`](crate::TokenCacheBuilder::with_rejection_hold)), reported as
    /// [`Error::Configuration`](crate::Error::Configuration).
    ///
    /// ```
    /// use tokenwarden_core::FetchError;
    ///
    /// let wrong = FetchError::configuration("invalid_scope: payments:write is not allowed");
    /// assert!(wrong.is_configuration() && !wrong.is_retryable());
    /// ```
    pub fn configuration(error: impl Into<BoxError>) -> Self {
        Self::of(Kind::Configuration, error.into())
    }

    /// Whether the issuer refused the request as misconfigured (see
    /// [`configuration`](Self::configuration)).
    #[must_use]
    pub fn is_configuration(&self) -> bool {
        self.kind == Kind::Configuration
    }

    /// The issuer answered, with a failure of its own (a `5xx` without `Retry-After`): while
    /// callers wait for a token (none usable is held), the cache asks again on the short,
    /// jittered recovery beat ([`with_recovery_probe`](crate::TokenCacheBuilder::with_recovery_probe), between
    /// half and all of it) instead of the exponential backoff, so that callers get a token
    /// within about a beat of the issuer being healthy again. One fetch at a time, as always;
    /// a [`retry_after`](Self::retry_after) still wins. Only for a transient error.
    ///
    /// ```
    /// use tokenwarden_core::FetchError;
    ///
    /// let failed = FetchError::transient("the issuer answered 503").with_fast_retry();
    /// assert!(failed.is_fast_retry());
    /// ```
    #[must_use]
    pub fn with_fast_retry(mut self) -> Self {
        self.fast_retry = self.kind == Kind::Transient;
        self
    }

    /// Whether the cache may ask again on the short recovery beat (see
    /// [`with_fast_retry`](Self::with_fast_retry)).
    #[must_use]
    pub fn is_fast_retry(&self) -> bool {
        self.fast_retry
    }

    /// The issuer said when to ask again (`Retry-After` on a `429` or `503`): the cache does
    /// not call it before then — at most [`with_backoff`](crate::TokenCacheBuilder::with_backoff)
    /// later (30 s by default), so a hint of hours cannot lock the cache out for hours.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenwarden_core::FetchError;
    ///
    /// let busy = FetchError::transient("the issuer answered 503")
    ///     .with_retry_after(Duration::from_secs(5));
    /// assert_eq!(busy.retry_after(), Some(Duration::from_secs(5)));
    /// ```
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// When the issuer said to ask again, if it did.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// A cheap check of whether the issuer answers again (see [`Probe`]). Only used for a
    /// retryable error without a [`retry_after`](Self::retry_after).
    #[must_use]
    pub fn with_probe(mut self, probe: Probe) -> Self {
        self.probe = Some(probe);
        self
    }

    /// The probe attached to this error, if any.
    #[must_use]
    pub fn probe(&self) -> Option<&Probe> {
        self.probe.as_ref()
    }

    /// Whether a later attempt can succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.kind == Kind::Transient
    }

    /// The underlying error, e.g. to downcast to a gateway's own error type.
    #[must_use]
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Debug for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchError")
            .field("retryable", &self.is_retryable())
            .field("configuration", &self.is_configuration())
            .field("retry_after", &self.retry_after)
            .field("fast_retry", &self.fast_retry)
            .field("probe", &self.probe.is_some())
            .field("error", &self.inner)
            .finish()
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl StdError for FetchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}
