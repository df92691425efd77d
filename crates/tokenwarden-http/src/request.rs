//! A request body copied aside as it is sent, so the request can be sent again.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokenwarden_core::BoxError;

use crate::NotReplayed;

/// A frame kept for a replay.
#[derive(Clone)]
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn of(frame: &Frame<Bytes>) -> Option<Self> {
        if let Some(data) = frame.data_ref() {
            Some(Kept::Data(data.clone()))
        } else {
            frame.trailers_ref().map(|t| Kept::Trailers(t.clone()))
        }
    }

    fn into_frame(self) -> Frame<Bytes> {
        match self {
            Kept::Data(d) => Frame::data(d),
            Kept::Trailers(t) => Frame::trailers(t),
        }
    }
}

/// What a request body left behind for a replay.
struct TeeBuffer {
    cap: usize,
    /// The first frame, kept inline: most bodies are one frame, and need no vector.
    first: Option<Kept>,
    rest: Vec<Kept>,
    bytes: usize,
    /// The length the body stated exactly when it was handed over, if it did: a client that
    /// framed it with `content-length` stops reading once that many bytes are sent.
    exact: Option<u64>,
    state: TeeState,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum TeeState {
    /// Still being sent (or never finished).
    #[default]
    Sending,
    /// Sent to its end and every frame kept.
    Complete,
    /// Larger than the cap: nothing kept.
    TooLarge,
}

impl TeeBuffer {
    fn new(cap: usize, exact: Option<u64>) -> Self {
        Self {
            cap,
            first: None,
            rest: Vec::new(),
            bytes: 0,
            exact,
            state: TeeState::Sending,
        }
    }

    /// The kept body, if the whole of it was sent and kept.
    fn replay(shared: &Mutex<TeeBuffer>) -> Result<RequestBodyReplay, NotReplayed> {
        let tee = shared.lock().unwrap_or_else(PoisonError::into_inner);
        match tee.state {
            TeeState::Complete => Ok(RequestBodyReplay(
                tee.first.iter().chain(&tee.rest).cloned().collect(),
            )),
            TeeState::TooLarge => Err(NotReplayed::BodyTooLarge),
            TeeState::Sending => Err(NotReplayed::BodyNotReplayable),
        }
    }
}

/// A kept request body, ready to be sent again.
struct RequestBodyReplay(VecDeque<Kept>);

pin_project! {
    /// The request body the inner service receives: the caller's body, passed through (and
    /// copied aside, up to the replay cap, so the request can be replayed), or a replay of it.
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Passthrough { #[pin] body: B },
        Teed { #[pin] body: B, tee: Arc<Mutex<TeeBuffer>> },
        Empty,
        // Boxed to keep the body type small: clients move requests around many times.
        Replay { replay: Box<(VecDeque<Kept>, u64)> },
    }
}

impl<B> RequestBody<B> {
    /// The caller's body, untouched: nothing kept.
    #[inline]
    pub fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough { body },
        }
    }

    /// The caller's body, copied aside into `tee` while it is sent, up to `cap` bytes.
    fn teed(body: B, tee: Arc<Mutex<TeeBuffer>>) -> Self
    where
        B: Body,
    {
        if body.is_end_stream() {
            // Clients do not poll a body that says it is empty.
            tee.lock().unwrap_or_else(PoisonError::into_inner).state = TeeState::Complete;
        }
        Self {
            kind: Kind::Teed { body, tee },
        }
    }

    /// The caller's body, copied aside as it is sent, up to `cap` bytes; the [`KeptBody`]
    /// gives it back for a replay. A body that is empty from the start is not copied, and one
    /// that says it is larger than `cap` is not kept.
    #[inline]
    pub fn keep(body: B, cap: usize) -> (Self, KeptBody)
    where
        B: Body,
    {
        if body.is_end_stream() {
            // A body-less request: nothing to copy, nothing to allocate.
            (Self::passthrough(body), KeptBody(KeptKind::Empty))
        } else if body.size_hint().lower() > cap as u64 {
            (Self::passthrough(body), KeptBody(KeptKind::TooLarge))
        } else {
            let exact = body.size_hint().exact();
            let tee = Arc::new(Mutex::new(TeeBuffer::new(cap, exact)));
            let kept = KeptBody(KeptKind::Copy(Arc::clone(&tee)));
            (Self::teed(body, tee), kept)
        }
    }

    /// A replay of a body that was empty.
    fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    fn replay(replay: RequestBodyReplay) -> Self {
        let remaining = replay
            .0
            .iter()
            .map(|k| match k {
                Kept::Data(d) => d.len() as u64,
                Kept::Trailers(_) => 0,
            })
            .sum();
        Self {
            kind: Kind::Replay {
                replay: Box::new((replay.0, remaining)),
            },
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Teed { mut body, tee } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                let mut tee = tee.lock().unwrap_or_else(PoisonError::into_inner);
                match &frame {
                    Some(Ok(frame)) if tee.state == TeeState::Sending => {
                        tee.bytes += frame.data_ref().map_or(0, Bytes::len);
                        if tee.bytes > tee.cap {
                            tee.state = TeeState::TooLarge;
                            tee.first = None;
                            tee.rest = Vec::new();
                        } else if let Some(kept) = Kept::of(frame) {
                            if tee.first.is_none() {
                                tee.first = Some(kept);
                            } else {
                                tee.rest.push(kept);
                            }
                            // Clients stop polling once a body says it has ended, or once the
                            // length they framed it with is sent.
                            if body.is_end_stream() || tee.exact == Some(tee.bytes as u64) {
                                tee.state = TeeState::Complete;
                            }
                        }
                    }
                    None if tee.state == TeeState::Sending => tee.state = TeeState::Complete,
                    // Trailers after the stated length was sent (a client that does send them).
                    Some(Ok(frame)) if tee.state == TeeState::Complete => {
                        if let Some(trailers) = frame.trailers_ref() {
                            tee.rest.push(Kept::Trailers(trailers.clone()));
                        }
                    }
                    _ => {}
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            KindProj::Empty => Poll::Ready(None),
            KindProj::Replay { replay } => {
                let (frames, remaining) = &mut **replay;
                let frame = frames.pop_front().map(Kept::into_frame);
                if let Some(data) = frame.as_ref().and_then(Frame::data_ref) {
                    *remaining -= data.len() as u64;
                }
                Poll::Ready(frame.map(Ok))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } | Kind::Teed { body, .. } => body.is_end_stream(),
            Kind::Replay { replay } => replay.0.is_empty(),
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } | Kind::Teed { body, .. } => body.size_hint(),
            // With trailers to come the length stays open, as it was for the stream copied: a
            // body of exact length goes with a `content-length`, and HTTP/1 drops its trailers.
            Kind::Replay { replay } if matches!(replay.0.back(), Some(Kept::Trailers(_))) => {
                let mut hint = SizeHint::new();
                hint.set_lower(replay.1);
                hint
            }
            Kind::Replay { replay } => SizeHint::with_exact(replay.1),
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "passthrough",
            Kind::Teed { .. } => "teed",
            Kind::Replay { .. } => "replay",
            Kind::Empty => "empty",
        };
        f.debug_struct("RequestBody").field("kind", &kind).finish()
    }
}

/// What [`RequestBody::keep`] kept of a body: once the first attempt is answered,
/// [`replay`](Self::replay) gives the body to send again, if all of it was sent and kept.
pub struct KeptBody(KeptKind);

enum KeptKind {
    /// It was empty: nothing to keep.
    Empty,
    /// It is copied aside as it is sent.
    Copy(Arc<Mutex<TeeBuffer>>),
    /// It said it is larger than the cap.
    TooLarge,
}

impl KeptBody {
    /// The body to send again; why there is none if it was larger than the cap, or was not
    /// sent to its end (the server answered before reading it all).
    ///
    /// # Errors
    ///
    /// [`NotReplayed::BodyTooLarge`] or [`NotReplayed::BodyNotReplayable`].
    pub fn replay<B>(self) -> Result<RequestBody<B>, NotReplayed> {
        match self.0 {
            KeptKind::Empty => Ok(RequestBody::empty()),
            KeptKind::Copy(tee) => TeeBuffer::replay(&tee).map(RequestBody::replay),
            KeptKind::TooLarge => Err(NotReplayed::BodyTooLarge),
        }
    }
}

impl std::fmt::Debug for KeptBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            KeptKind::Empty => "empty",
            KeptKind::Copy(_) => "copy",
            KeptKind::TooLarge => "too large",
        };
        f.debug_tuple("KeptBody").field(&kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn stream(frames: Vec<Frame<Bytes>>) -> impl Body<Data = Bytes, Error = BoxError> {
        StreamBody::new(futures_util::stream::iter(frames.into_iter().map(Ok)))
    }

    #[tokio::test]
    async fn a_body_of_stated_length_is_complete_once_that_length_is_sent() {
        // A client framing with `content-length` reads the data and stops: never the trailers.
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", HeaderValue::from_static("abc"));
        let body = http_body_util::Full::new(Bytes::from_static(b"{\"amount\":1}"))
            .map_err(|never| match never {})
            .with_trailers(std::future::ready(Some(Ok::<_, BoxError>(trailers))));
        assert_eq!(body.size_hint().exact(), Some(12));
        let (sent, kept) = RequestBody::keep(body, 1024);
        let mut sent = std::pin::pin!(sent);
        let first = sent.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "{\"amount\":1}");
        // The client stops here: the trailers are never polled.
        let replay = kept
            .replay::<http_body_util::Empty<Bytes>>()
            .expect("replayable");
        assert_eq!(replay.collect().await.unwrap().to_bytes(), "{\"amount\":1}");
    }

    // An HTTP/1 client frames a body of exact length with `content-length`, and then has nowhere
    // to put trailers: it drops them. A stream of unknown length goes chunked, trailers and all.
    #[tokio::test]
    async fn a_replay_with_trailers_is_framed_as_the_stream_it_copies() {
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", HeaderValue::from_static("abc"));
        let frames = vec![
            Frame::data(Bytes::from_static(b"chunk")),
            Frame::trailers(trailers.clone()),
        ];
        let (sent, kept) = RequestBody::keep(stream(frames), 1024);
        assert_eq!(sent.size_hint().exact(), None);
        let sent = sent.collect().await.unwrap();
        assert_eq!(sent.trailers(), Some(&trailers));

        let replay = kept.replay::<http_body_util::Empty<Bytes>>().unwrap();
        assert_eq!(replay.size_hint().lower(), 5);
        assert_eq!(
            replay.size_hint().exact(),
            None,
            "trailers would be dropped"
        );
        let replayed = replay.collect().await.unwrap();
        assert_eq!(replayed.trailers(), Some(&trailers));
        assert_eq!(replayed.to_bytes(), "chunk");
    }

    #[tokio::test]
    async fn a_replay_without_trailers_has_its_exact_length() {
        let frames = vec![
            Frame::data(Bytes::from_static(b"ab")),
            Frame::data(Bytes::from_static(b"c")),
        ];
        let (sent, kept) = RequestBody::keep(stream(frames), 1024);
        assert_eq!(sent.collect().await.unwrap().to_bytes(), "abc");
        let replay = kept.replay::<http_body_util::Empty<Bytes>>().unwrap();
        assert_eq!(replay.size_hint().exact(), Some(3));
        assert_eq!(replay.collect().await.unwrap().to_bytes(), "abc");
    }
}
