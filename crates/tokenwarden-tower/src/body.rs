//! How a request body is kept for a replay: copied aside as it is sent ([`Tee`]), or cloned
//! ([`CloneBody`]).

use bytes::Bytes;
use http::Request;
use http_body::Body;
use tokenwarden_http::adapter::KeptBody;
use tokenwarden_http::{NotReplayed, RequestBody};

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
    fn passthrough(request: Request<B>) -> Request<Self::Sent>;
    #[doc(hidden)]
    fn keep(request: Request<B>, cap: usize) -> (Request<Self::Sent>, Self::Kept);
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

impl<B> KeepBody<B> for Tee
where
    B: Body<Data = Bytes>,
{
    type Sent = RequestBody<B>;
    type Kept = KeptBody;

    #[inline]
    fn passthrough(request: Request<B>) -> Request<RequestBody<B>> {
        request.map(RequestBody::passthrough)
    }

    #[inline]
    fn keep(request: Request<B>, cap: usize) -> (Request<RequestBody<B>>, KeptBody) {
        let (parts, body) = request.into_parts();
        let (body, kept) = RequestBody::keep(body, cap);
        (Request::from_parts(parts, body), kept)
    }

    fn replay(kept: KeptBody) -> Result<RequestBody<B>, NotReplayed> {
        kept.replay()
    }
}

impl<B> KeepBody<B> for CloneBody
where
    B: Body + Clone,
{
    type Sent = B;
    type Kept = Result<B, NotReplayed>;

    #[inline]
    fn passthrough(request: Request<B>) -> Request<B> {
        request
    }

    #[inline]
    fn keep(request: Request<B>, cap: usize) -> (Request<B>, Result<B, NotReplayed>) {
        let body = request.body();
        let kept = match body.size_hint().upper() {
            Some(upper) if upper <= cap as u64 => Ok(body.clone()),
            Some(_) => Err(NotReplayed::BodyTooLarge),
            None if body.size_hint().lower() > cap as u64 => Err(NotReplayed::BodyTooLarge),
            None => Err(NotReplayed::BodyNotReplayable),
        };
        (request, kept)
    }

    #[inline]
    fn replay(kept: Result<B, NotReplayed>) -> Result<B, NotReplayed> {
        kept
    }
}
