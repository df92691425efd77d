//! Request bodies kept for a replay: copied aside as they are sent ([`Tee`]), or cloned
//! ([`CloneBody`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokenwarden_http::NotReplayed;
use tower::BoxError;

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
pub(crate) struct TeeBuffer {
    cap: usize,
    /// The first frame, kept inline: most bodies are one frame, and need no vector.
    first: Option<Kept>,
    rest: Vec<Kept>,
    bytes: usize,
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
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            first: None,
            rest: Vec::new(),
            bytes: 0,
            state: TeeState::Sending,
        }
    }

    /// The kept body, if the whole of it was sent and kept.
    pub(crate) fn replay(shared: &Mutex<TeeBuffer>) -> Result<RequestBodyReplay, NotReplayed> {
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
pub(crate) struct RequestBodyReplay(VecDeque<Kept>);

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
    /// The caller's body, untouched.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough { body },
        }
    }

    /// The caller's body, copied aside into `tee` while it is sent, up to `cap` bytes.
    pub(crate) fn teed(body: B, tee: Arc<Mutex<TeeBuffer>>) -> Self
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

    /// A replay of a body that was empty.
    fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    pub(crate) fn replay(replay: RequestBodyReplay) -> Self {
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
                            // Clients stop polling once a body says it has ended.
                            if body.is_end_stream() {
                                tee.state = TeeState::Complete;
                            }
                        }
                    }
                    None if tee.state == TeeState::Sending => tee.state = TeeState::Complete,
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

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Tee {}
    impl Sealed for super::CloneBody {}
}

/// How a layer keeps a request body of type `B` so the request can be sent again after a
/// rejection: [`Tee`] (any body; the inner service takes [`RequestBody<B>`]) or
/// [`CloneBody`] (bodies that are cheap to clone; the inner service takes `B` itself).
///
/// Either way a body larger than the replay cap is sent once and not replayed.
pub trait KeepBody<B>: sealed::Sealed {
    /// The body type the inner service takes.
    type Sent;
    #[doc(hidden)]
    type Kept;
    #[doc(hidden)]
    fn passthrough(body: B) -> Self::Sent;
    #[doc(hidden)]
    fn keep(body: B, cap: usize) -> (Self::Sent, Self::Kept);
    #[doc(hidden)]
    fn replay(kept: Self::Kept) -> Result<Self::Sent, NotReplayed>;
}

/// Keeps any request body by copying it aside *as it is sent*, up to the replay cap: the inner
/// service takes [`RequestBody<B>`] (for hyper-util's client,
/// `Client::builder(..).build::<_, RequestBody<Full<Bytes>>>(..)`). A body the server answered
/// before reading to its end is not replayed. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tee;

/// Keeps a request body by cloning it before it is sent: for bodies that are cheap to clone
/// (`Full<Bytes>`, `Empty<Bytes>`, `String`), so the inner service takes `B` itself and an
/// existing client needs no change of type. Chosen with `cloning_bodies()`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneBody;

/// What [`Tee`] keeps of one body.
#[doc(hidden)]
pub struct Teed(TeedKind);

impl std::fmt::Debug for Teed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Teed")
    }
}

enum TeedKind {
    /// It was empty: nothing to keep.
    Empty,
    /// It is copied aside as it is sent.
    Copy(Arc<Mutex<TeeBuffer>>),
    /// It said it is larger than the cap.
    TooLarge,
}

impl<B> KeepBody<B> for Tee
where
    B: Body<Data = Bytes>,
{
    type Sent = RequestBody<B>;
    type Kept = Teed;

    #[inline]
    fn passthrough(body: B) -> RequestBody<B> {
        RequestBody::passthrough(body)
    }

    #[inline]
    fn keep(body: B, cap: usize) -> (RequestBody<B>, Teed) {
        if body.is_end_stream() {
            // A body-less request: nothing to copy, nothing to allocate.
            (RequestBody::passthrough(body), Teed(TeedKind::Empty))
        } else if body.size_hint().lower() > cap as u64 {
            (RequestBody::passthrough(body), Teed(TeedKind::TooLarge))
        } else {
            let tee = Arc::new(Mutex::new(TeeBuffer::new(cap)));
            (
                RequestBody::teed(body, Arc::clone(&tee)),
                Teed(TeedKind::Copy(tee)),
            )
        }
    }

    fn replay(kept: Teed) -> Result<RequestBody<B>, NotReplayed> {
        match kept.0 {
            TeedKind::Empty => Ok(RequestBody::empty()),
            TeedKind::Copy(tee) => TeeBuffer::replay(&tee).map(RequestBody::replay),
            TeedKind::TooLarge => Err(NotReplayed::BodyTooLarge),
        }
    }
}

impl<B> KeepBody<B> for CloneBody
where
    B: Body + Clone,
{
    type Sent = B;
    type Kept = Result<B, NotReplayed>;

    #[inline]
    fn passthrough(body: B) -> B {
        body
    }

    #[inline]
    fn keep(body: B, cap: usize) -> (B, Result<B, NotReplayed>) {
        let kept = match body.size_hint().upper() {
            Some(upper) if upper <= cap as u64 => Ok(body.clone()),
            Some(_) => Err(NotReplayed::BodyTooLarge),
            None if body.size_hint().lower() > cap as u64 => Err(NotReplayed::BodyTooLarge),
            None => Err(NotReplayed::BodyNotReplayable),
        };
        (body, kept)
    }

    #[inline]
    fn replay(kept: Result<B, NotReplayed>) -> Result<B, NotReplayed> {
        kept
    }
}
