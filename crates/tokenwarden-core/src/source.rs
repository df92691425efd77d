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
    retryable: bool,
    retry_after: Option<Duration>,
    inner: Arc<dyn StdError + Send + Sync + 'static>,
}

impl FetchError {
    /// A failure a later attempt may not see: a timeout, a 5xx, a reset connection,
    /// a malformed body from a proxy. The cache retries with backoff.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            retryable: true,
            retry_after: None,
            inner: Arc::from(error.into()),
        }
    }

    /// The issuer rejected the credentials (or the request token): retrying with the same
    /// credentials cannot succeed. The cache reports it and holds further attempts off for
    /// a few seconds ([`CacheConfig::rejection_hold`](crate::CacheConfig)).
    pub fn rejected(error: impl Into<BoxError>) -> Self {
        Self {
            retryable: false,
            retry_after: None,
            inner: Arc::from(error.into()),
        }
    }

    /// The issuer said when to ask again (`Retry-After` on a `429` or `503`): the cache does
    /// not call it before then — at most [`CacheConfig::backoff_max`](crate::CacheConfig)
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

    /// Whether a later attempt can succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.retryable
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
            .field("retryable", &self.retryable)
            .field("retry_after", &self.retry_after)
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
