//! A response body whose first frames were read ahead, to classify the response.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A response body as the caller receives it from a layer: the frames read ahead to
    /// classify the response (if any), then the rest of the original body.
    pub struct PrefixedBody<B> {
        prefix: VecDeque<Frame<Bytes>>,
        #[pin]
        inner: B,
    }
}

impl<B> PrefixedBody<B> {
    /// Wraps a body; nothing is read until [`inspect`](Self::inspect) is called.
    pub fn new(inner: B) -> Self {
        Self {
            prefix: VecDeque::new(),
            inner,
        }
    }

    /// The inner body.
    ///
    /// Frames that were read to classify the response are not in it: use the `ResponseBody`
    /// itself to read the whole body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> PrefixedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Reads frames ahead until at least `limit` bytes (or the end) are kept, and returns the
    /// bytes read; the body still yields every frame afterwards.
    ///
    /// # Errors
    ///
    /// The inner body's error, if reading it fails.
    pub async fn inspect(&mut self, limit: usize) -> Result<Bytes, B::Error> {
        let mut seen = Vec::new();
        while seen.len() < limit {
            match std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_frame(cx)).await {
                Some(frame) => {
                    let frame = frame?;
                    if let Some(data) = frame.data_ref() {
                        seen.extend_from_slice(data);
                    }
                    self.prefix.push_back(frame);
                }
                None => break,
            }
        }
        Ok(seen.into())
    }
}

impl<B> Body for PrefixedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let kept: u64 = self
            .prefix
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + kept);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + kept);
        }
        hint
    }
}

impl<B> std::fmt::Debug for PrefixedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixedBody")
            .field("prefix_frames", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

/// How much of a rejected response's body [`drain`] reads before giving up: 64 KiB.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// How long [`drain`] reads a rejected response's body before giving up: 1 s.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads what is left of a rejected response (a small error body, usually) so that the
/// connection can be reused for the replay; gives up after [`DRAIN_LIMIT`] bytes or
/// [`DRAIN_TIME`], whichever comes first, and drops the rest. Both layers call it.
pub async fn drain<B: Body>(body: B) {
    let mut body = std::pin::pin!(body);
    let mut read = 0;
    let reading = async {
        while read <= DRAIN_LIMIT {
            match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, bytes::Buf::remaining),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, reading).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn inspecting_keeps_every_frame() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = ["ab", "cd", "ef"]
            .map(|s| Ok(Frame::data(Bytes::from(s))))
            .into();
        let mut body = PrefixedBody::new(StreamBody::new(futures_util::stream::iter(frames)));
        assert_eq!(body.inspect(3).await.unwrap(), "abcd");
        assert_eq!(body.size_hint().lower(), 4);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
    }
}
