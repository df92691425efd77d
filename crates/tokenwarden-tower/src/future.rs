//! The response future of [`TokenService`](crate::TokenService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{BoxError, Service};

use crate::ResponseBody;
use crate::body::RequestBody;
use crate::service::{ReplayState, Screened, recover, screen};

type Boxed<B> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

pin_project! {
    /// Resolves to the response of the request, or of its replay.
    ///
    /// While a token is cached and the response is not a rejection, it is the inner service's
    /// future and nothing else: no allocation. Waiting for a token and recovering from a
    /// rejection run in a boxed future.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        #[pin]
        state: State<S::Future, ResBody>,
        replay: Option<Box<ReplayState<S>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        First { #[pin] future: F },
        Boxed { future: Boxed<B> },
        Failed { error: Option<BoxError> },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>>,
{
    pub(crate) fn first(future: S::Future, replay: Option<Box<ReplayState<S>>>) -> Self {
        Self {
            state: State::First { future },
            replay,
        }
    }

    pub(crate) fn boxed(future: Boxed<ResBody>) -> Self {
        Self {
            state: State::Boxed { future },
            replay: None,
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            replay: None,
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::First { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    match screen(response, this.replay.take()) {
                        Screened::Done(response) => return Poll::Ready(Ok(response)),
                        Screened::Suspect(replay, response, verdict) => {
                            let future = Box::pin(recover(replay, response, verdict));
                            this.state.set(State::Boxed { future });
                        }
                    }
                }
                StateProj::Boxed { future } => return future.as_mut().poll(cx),
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .unwrap_or_else(|| "response future polled after completion".into());
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("replayable", &self.replay.is_some())
            .finish_non_exhaustive()
    }
}
