//! A response body whose first frames may have been read ahead: to classify the response, or
//! while a rejected response waits for a fresh token.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// How much of a rejected response's body is read (and kept) while the fresh token is fetched,
/// so the connection can be reused: 64 KiB.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// How long a rejected response's body is read while the fresh token is fetched: 1 s. The
/// replay never waits for it: once the token is there, what was not read is dropped.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

pin_project! {
    /// A body whose first frames may have been read ahead, then the rest of it. An error met
    /// while reading ahead is kept and handed out after those frames, in its place.
    pub(crate) struct PrefixedBody<B>
    where
        B: Body,
    {
        prefix: VecDeque<Frame<Bytes>>,
        // Data bytes read ahead so far.
        seen: usize,
        // The inner body has ended (it returned `None` while reading ahead).
        ended: bool,
        failed: Option<B::Error>,
        #[pin]
        inner: B,
    }
}

impl<B: Body> PrefixedBody<B> {
    /// Wraps a body; nothing is read ahead until [`poll_read_ahead`](Self::poll_read_ahead).
    pub(crate) fn new(inner: B) -> Self {
        Self {
            prefix: VecDeque::new(),
            seen: 0,
            ended: false,
            failed: None,
            inner,
        }
    }

    /// The data read ahead so far, at most `limit` bytes of it.
    pub(crate) fn peek(&self, limit: usize) -> Bytes {
        let mut frames = self.prefix.iter().filter_map(Frame::data_ref);
        match (frames.next(), frames.next()) {
            (None, _) => Bytes::new(),
            (Some(only), None) => only.slice(..only.len().min(limit)),
            (Some(first), Some(second)) => {
                let mut joined = Vec::with_capacity(self.seen.min(limit));
                for data in [first, second].into_iter().chain(frames) {
                    let room = limit - joined.len();
                    joined.extend_from_slice(&data[..data.len().min(room)]);
                    if joined.len() == limit {
                        break;
                    }
                }
                joined.into()
            }
        }
    }

    /// Whether reading ahead is over: the body ended or failed.
    #[cfg(test)]
    fn is_read_through(&self) -> bool {
        self.ended || self.failed.is_some()
    }
}

impl<B> PrefixedBody<B>
where
    B: Body<Data = Bytes>,
{
    /// Reads frames ahead, keeping them, until at least `limit` data bytes are kept or the body
    /// ends or fails. Cancelling it (by not polling it again) loses nothing: every frame read is
    /// kept.
    pub(crate) fn poll_read_ahead(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<()> {
        let mut this = self.project();
        while *this.seen < limit && !*this.ended && this.failed.is_none() {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => *this.ended = true,
                Poll::Ready(Some(Err(error))) => *this.failed = Some(error),
                // An empty data frame carries nothing: not kept, so a peer sending a flood of
                // them cannot grow the read-ahead while the time runs.
                Poll::Ready(Some(Ok(frame))) if frame.data_ref().is_some_and(Bytes::is_empty) => {}
                Poll::Ready(Some(Ok(frame))) => {
                    *this.seen += frame.data_ref().map_or(0, Bytes::len);
                    this.prefix.push_back(frame);
                }
            }
        }
        Poll::Ready(())
    }
}

impl<B> Body for PrefixedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.failed.take() {
            *this.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        this.inner.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.failed.is_none()
            && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let kept: u64 = self
            .prefix
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        if self.ended {
            return SizeHint::with_exact(kept);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + kept);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + kept);
        }
        hint
    }
}

impl<B: Body> std::fmt::Debug for PrefixedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixedBody")
            .field("read_ahead_frames", &self.prefix.len())
            .field("read_ahead_bytes", &self.seen)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response body a caller receives from a layer: the inner service's body as it is,
    /// or — for a response whose body was read to classify it, or a rejection that was not
    /// replayed — the bytes read, then the rest of it.
    pub struct ResponseBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Plain { #[pin] body: B },
        ReadAhead { body: Pin<Box<PrefixedBody<B>>> },
    }
}

impl<B: Body> ResponseBody<B> {
    /// The body as it is: nothing read ahead.
    #[inline]
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Plain { body },
        }
    }

    pub(crate) fn read_ahead(body: Pin<Box<PrefixedBody<B>>>) -> Self {
        Self {
            kind: Kind::ReadAhead { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx),
            KindProj::ReadAhead { body } => body.as_mut().poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::ReadAhead { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::ReadAhead { body } => body.size_hint(),
        }
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Plain { .. } => f.debug_struct("ResponseBody").finish_non_exhaustive(),
            Kind::ReadAhead { body } => f.debug_tuple("ResponseBody").field(body).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body(
        frames: Vec<Result<Frame<Bytes>, &'static str>>,
    ) -> PrefixedBody<impl Body<Data = Bytes, Error = &'static str>> {
        PrefixedBody::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn reading_ahead_keeps_every_frame() {
        let frames = ["ab", "cd", "ef"].map(|s| Ok(Frame::data(Bytes::from(s))));
        let mut body = std::pin::pin!(body(frames.into()));
        std::future::poll_fn(|cx| body.as_mut().poll_read_ahead(cx, 3)).await;
        assert_eq!(body.peek(3), "abc");
        assert_eq!(body.peek(100), "abcd");
        assert_eq!(body.size_hint().lower(), 4);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn empty_data_frames_read_ahead_are_not_kept() {
        let mut frames: Vec<_> = (0..10_000).map(|_| Ok(Frame::data(Bytes::new()))).collect();
        frames.push(Ok(Frame::data(Bytes::from_static(b"end"))));
        let mut body = std::pin::pin!(body(frames));
        std::future::poll_fn(|cx| body.as_mut().poll_read_ahead(cx, 100)).await;
        assert_eq!(body.prefix.len(), 1, "only the frame with data is kept");
        assert_eq!(body.peek(100), "end");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "end");
    }

    #[tokio::test]
    async fn an_error_met_reading_ahead_comes_after_the_frames_read() {
        let mut body = std::pin::pin!(body(vec![
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err("connection reset"),
        ]));
        std::future::poll_fn(|cx| body.as_mut().poll_read_ahead(cx, 100)).await;
        assert!(body.is_read_through());
        assert_eq!(body.peek(100), "partial");
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "partial");
        assert_eq!(body.frame().await.unwrap().unwrap_err(), "connection reset");
        assert!(body.frame().await.is_none());
    }
}
