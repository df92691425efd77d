//! The response future of [`TokenService`](crate::TokenService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::BoxError;

/// Resolves to the response of the request (or of its replay).
///
/// Boxed: the request may go through a fetch, a body drain and a second call of the inner
/// service. On loopback HTTP the allocation is below the noise (see the crate's
/// `tower_overhead` benchmark).
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<T> {
    pub(crate) inner: Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>,
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
