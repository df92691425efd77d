//! The response future of [`TokenService`](crate::TokenService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokenwarden_core::future::GetOwned;
use tokenwarden_core::{KeyHandle, Route, Snapshot, TokenId};
use tokenwarden_http::adapter::{Recover, Recovered};
use tokenwarden_http::{ResponseBody, Verdict};
use tower::{BoxError, Service};

use crate::body::{KeepBody, Tee};
use crate::service::{Shared, absolute, prepare};

/// What a request keeps for a replay: the token it carried, its head as the caller made it,
/// and its body as `M` keeps it.
pub(crate) struct Kept<ReqBody, M: KeepBody<ReqBody>> {
    pub(crate) token: Snapshot,
    pub(crate) head: http::request::Parts,
    pub(crate) body: M::Kept,
    /// A keyed layer's key, held for the request's life.
    pub(crate) key: Option<KeyHandle>,
}

/// A request waiting for a token, and the service driven to ready for it.
pub(crate) struct Waiting<S, ReqBody> {
    token: GetOwned,
    inner: Option<S>,
    request: Option<Request<ReqBody>>,
    key: Option<KeyHandle>,
}

/// A replay waiting for a clone of the service to be ready.
pub(crate) struct ReadyToReplay<S, Sent> {
    inner: S,
    request: Option<Request<Sent>>,
    rejected: TokenId,
    fresh: Snapshot,
    key: Option<KeyHandle>,
}

/// A DPoP-bound replay's URL, kept to read a nonce from its answer.
type ProvedUri = Option<Box<http::Uri>>;

pin_project! {
    /// Resolves to the response of the request, or of its replay.
    ///
    /// While a token is cached and the response is not a rejection, it is the inner service's
    /// future and a few words beside it: no allocation, and no bound beyond the inner
    /// service's own (`Send` when it is, no `'static` or `Unpin` required).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, ReqBody, ResBody, M = Tee>
    where
        M: KeepBody<ReqBody>,
        S: Service<Request<<M as KeepBody<ReqBody>>::Sent>>,
        ResBody: Body,
    {
        #[pin]
        state: State<S, ReqBody, ResBody, M>,
        shared: Option<Arc<Shared<S>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody, M>
    where
        M: KeepBody<ReqBody>,
        S: Service<Request<<M as KeepBody<ReqBody>>::Sent>>,
        ResBody: Body,
    {
        // No token was cached: waiting for one, with the service driven to ready. (The rare
        // states are boxed: the future stays as small as the common one, and moves cheaply.)
        Waiting {
            waiting: Box<Waiting<S, ReqBody>>,
        },
        // The request is sent; `kept` is what a replay needs (`None`: untouched request),
        // boxed so that the future moves as cheaply as the inner one.
        First {
            #[pin]
            future: S::Future,
            kept: Option<Box<Kept<ReqBody, M>>>,
        },
        // The answer was not accepted: the engine decides, and fetches a fresh token.
        Recovering {
            recover: Box<Recover<ResBody, Request<<M as KeepBody<ReqBody>>::Sent>>>,
        },
        // Driving a clone of the service to ready for the replay.
        Ready {
            ready: Box<ReadyToReplay<S, <M as KeepBody<ReqBody>>::Sent>>,
        },
        Replaying {
            #[pin]
            future: S::Future,
            rejected: TokenId,
            fresh: Snapshot,
            key: Option<KeyHandle>,
            route: Route,
            uri: ProvedUri,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S, ReqBody, ResBody, M> ResponseFuture<S, ReqBody, ResBody, M>
where
    M: KeepBody<ReqBody>,
    S: Service<Request<M::Sent>>,
    ResBody: Body,
{
    #[inline]
    pub(crate) fn untouched(future: S::Future) -> Self {
        Self {
            state: State::First { future, kept: None },
            shared: None,
        }
    }

    #[inline]
    pub(crate) fn first(
        future: S::Future,
        kept: Box<Kept<ReqBody, M>>,
        shared: Arc<Shared<S>>,
    ) -> Self {
        Self {
            state: State::First {
                future,
                kept: Some(kept),
            },
            shared: Some(shared),
        }
    }

    pub(crate) fn waiting(
        inner: S,
        request: Request<ReqBody>,
        token: GetOwned,
        key: Option<KeyHandle>,
        shared: Arc<Shared<S>>,
    ) -> Self {
        Self {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    token,
                    inner: Some(inner),
                    request: Some(request),
                    key,
                }),
            },
            shared: Some(shared),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            shared: None,
        }
    }
}

const DONE: &str = "`ResponseFuture` polled after it completed";

impl<S, ReqBody, ResBody, M> Future for ResponseFuture<S, ReqBody, ResBody, M>
where
    M: KeepBody<ReqBody>,
    S: Service<Request<M::Sent>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::First { future, kept } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let (Some(kept), Some(shared)) = (kept.take(), this.shared.as_ref()) else {
                        return Poll::Ready(Ok(response.map(ResponseBody::new)));
                    };
                    let engine = &shared.engine;
                    kept.token
                        .observe(response.headers(), || absolute(&kept.head.uri));
                    let verdict = engine.screen(&kept.token, response.status(), response.headers());
                    if verdict == Verdict::Accepted {
                        return Poll::Ready(Ok(response.map(ResponseBody::new)));
                    }
                    let Kept {
                        token,
                        head,
                        body,
                        key,
                    } = *kept;
                    let route = engine.policy().route(head.method.as_str(), head.uri.path());
                    let again = M::replay(body).map(|body| Request::from_parts(head, body));
                    let recover =
                        Box::new(engine.recover(token, response, verdict, again, key, route));
                    this.state.set(State::Recovering { recover });
                }
                StateProj::Recovering { recover } => {
                    match ready!(Pin::new(&mut **recover).poll(cx)) {
                        Recovered::Respond(response) => return Poll::Ready(Ok(response)),
                        Recovered::Replay {
                            kept: mut request,
                            fresh,
                            rejected,
                            key,
                            nonce,
                        } => {
                            fresh.apply_to(request.headers_mut());
                            let (parts, body) = request.into_parts();
                            let mut parts = parts;
                            fresh.prove(
                                parts.method.as_str(),
                                || absolute(&parts.uri),
                                nonce.as_ref(),
                                &mut parts.headers,
                            )?;
                            let request = Request::from_parts(parts, body);
                            let shared = this.shared.as_ref().expect(DONE);
                            // tower's contract: a service is driven to ready before every call, the
                            // replay's too; a clone of the service as it was wrapped sends it.
                            this.state.set(State::Ready {
                                ready: Box::new(ReadyToReplay {
                                    inner: shared.replay_service(),
                                    request: Some(request),
                                    rejected,
                                    fresh,
                                    key,
                                }),
                            });
                        }
                    }
                }
                StateProj::Ready { ready } => {
                    let ReadyToReplay {
                        inner,
                        request,
                        rejected,
                        fresh,
                        key,
                    } = &mut **ready;
                    ready!(inner.poll_ready(cx)).map_err(Into::into)?;
                    let request = request.take().expect(DONE);
                    let policy = this.shared.as_ref().expect(DONE).engine.policy();
                    let route = policy.route(request.method().as_str(), request.uri().path());
                    let uri = fresh.is_dpop().then(|| Box::new(request.uri().clone()));
                    let future = inner.call(request);
                    let (rejected, fresh, key) = (*rejected, fresh.clone(), key.take());
                    this.state.set(State::Replaying {
                        future,
                        rejected,
                        fresh,
                        key,
                        route,
                        uri,
                    });
                }
                StateProj::Replaying {
                    future,
                    rejected,
                    fresh,
                    key,
                    route,
                    uri,
                } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if let Some(uri) = uri {
                        fresh.observe(response.headers(), || absolute(uri));
                    }
                    let shared = this.shared.as_ref().expect(DONE);
                    let marker = shared.engine.replayed(
                        key.as_ref(),
                        *rejected,
                        fresh,
                        response.status(),
                        response.headers(),
                        *route,
                    );
                    response.extensions_mut().insert(marker);
                    return Poll::Ready(Ok(response.map(ResponseBody::new)));
                }
                StateProj::Waiting { waiting } => {
                    let Waiting {
                        token,
                        inner,
                        request,
                        key,
                    } = &mut **waiting;
                    let token = ready!(Pin::new(token).poll(cx))?;
                    let shared = this.shared.as_ref().expect(DONE);
                    let request = request.take().expect(DONE);
                    let (request, kept) =
                        prepare::<M, ReqBody>(request, token, key.take(), &shared.engine)?;
                    let future = inner.take().expect(DONE).call(request);
                    this.state.set(State::First {
                        future,
                        kept: Some(kept),
                    });
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect(DONE)));
                }
            }
        }
    }
}

impl<S, ReqBody, ResBody, M> fmt::Debug for ResponseFuture<S, ReqBody, ResBody, M>
where
    M: KeepBody<ReqBody>,
    S: Service<Request<M::Sent>>,
    ResBody: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting for a token",
            State::First { .. } => "sending",
            State::Recovering { .. } => "recovering from a rejection",
            State::Ready { .. } | State::Replaying { .. } => "replaying",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
