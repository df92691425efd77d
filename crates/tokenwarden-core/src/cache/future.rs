//! The futures of [`TokenCache::get`](crate::TokenCache::get) and
//! [`TokenCache::get_owned`](crate::TokenCache::get_owned).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::inner::Inner;
use crate::{Error, Snapshot, TokenCache};

type Slow<'a> = Pin<Box<dyn Future<Output = Result<Snapshot, Error>> + Send + 'a>>;

/// Resolves to a token to send. Ready on its first poll while a valid token is cached; only
/// when it has to fetch or wait does it allocate the state for that.
#[must_use = "futures do nothing unless polled"]
pub struct Get<'a> {
    inner: &'a Arc<Inner>,
    slow: Option<Slow<'a>>,
}

impl<'a> Get<'a> {
    #[inline]
    pub(super) fn new(inner: &'a Arc<Inner>) -> Self {
        Self { inner, slow: None }
    }
}

impl Future for Get<'_> {
    type Output = Result<Snapshot, Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slow.is_none()
            && let Some(snapshot) = self.inner.cached()
        {
            return Poll::Ready(Ok(snapshot));
        }
        let inner = self.inner;
        self.slow
            .get_or_insert_with(|| slow(inner))
            .as_mut()
            .poll(cx)
    }
}

/// Kept out of line: the slow path's state is large, and building it in `poll`'s own frame
/// would cost every fast call a stack probe.
#[cold]
#[inline(never)]
fn slow(inner: &Arc<Inner>) -> Slow<'_> {
    Box::pin(inner.get_slow())
}

impl fmt::Debug for Get<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Get")
            .field("waiting", &self.slow.is_some())
            .finish_non_exhaustive()
    }
}

type OwnedSlow = Pin<Box<dyn Future<Output = Result<Snapshot, Error>> + Send>>;

/// Resolves to a token to send, like [`Get`], holding its own handle to the cache. Ready on
/// its first poll while a valid token is cached, without allocating.
#[must_use = "futures do nothing unless polled"]
pub struct GetOwned {
    cache: TokenCache,
    slow: Option<OwnedSlow>,
}

impl GetOwned {
    pub(crate) fn new(cache: TokenCache) -> Self {
        Self { cache, slow: None }
    }
}

impl Future for GetOwned {
    type Output = Result<Snapshot, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.slow.is_none()
            && let Some(snapshot) = self.cache.cached()
        {
            return Poll::Ready(Ok(snapshot));
        }
        let this = &mut *self;
        let cache = &this.cache;
        this.slow
            .get_or_insert_with(|| {
                let cache = cache.clone();
                Box::pin(async move { cache.get().await })
            })
            .as_mut()
            .poll(cx)
    }
}

impl fmt::Debug for GetOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetOwned")
            .field("waiting", &self.slow.is_some())
            .finish_non_exhaustive()
    }
}
