//! [`TokenService`]: the middleware itself.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokenwarden_core::{
    NotReplayed, Replay, Scope, SkipToken, Snapshot, TokenCache, Verdict, drain, record_acceptance,
};
use tower::{BoxError, Service, ServiceExt};

use crate::ResponseBody;
use crate::body::{RequestBody, Tee};
use crate::future::ResponseFuture;
use crate::layer::{Settings, settings_setters};

/// Puts the cache's token on every request to `S` and replays requests whose token was
/// rejected. Made by [`TokenLayer`](crate::TokenLayer).
#[derive(Debug)]
pub struct TokenService<S> {
    inner: S,
    // One shared allocation: cloning the service per request touches one reference count.
    shared: Arc<Shared<S>>,
}

/// What every clone of a service shares.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    settings: Settings,
    /// A clone of the inner service made when it was wrapped; replays go through clones of it
    /// (driven to ready first), so the common path never clones the inner service. In a mutex
    /// so that services that are `Send` but not `Sync` qualify.
    template: Mutex<S>,
}

impl<S: Clone> Shared<S> {
    fn replay_service(&self) -> S {
        self.template
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<S: Clone> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            template: Mutex::new(self.replay_service()),
        }
    }
}

impl<S: Clone> TokenService<S> {
    /// Wraps `inner`, taking tokens from `cache` for requests to the origins of `scope` (see
    /// [`TokenLayer::new`](crate::TokenLayer::new)).
    pub fn new(inner: S, cache: TokenCache, scope: impl Into<Scope>) -> Self {
        Self::with_settings(inner, Settings::new(cache, scope.into()))
    }

    pub(crate) fn with_settings(inner: S, settings: Settings) -> Self {
        let template = inner.clone();
        Self {
            inner,
            shared: Arc::new(Shared {
                settings,
                template: Mutex::new(template),
            }),
        }
    }

    fn settings_mut(&mut self) -> &mut Settings {
        &mut Arc::make_mut(&mut self.shared).settings
    }

    settings_setters!();
}

impl<S: Clone> Clone for TokenService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> TokenService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. Replays go through a clone of the service as it was when it
    /// was wrapped.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The cache tokens come from.
    pub fn cache(&self) -> &TokenCache {
        &self.shared.settings.cache
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TokenService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let settings = &self.shared.settings;
        let uri = request.uri();
        let admitted = if request.extensions().get::<SkipToken>().is_some() {
            Ok(false)
        } else {
            settings
                .policy
                .admit(uri.scheme_str(), uri.host(), uri.port_u16())
        };
        match admitted {
            Ok(true) => {}
            // Opted out, or outside the scope (another host, a redirect's target): untouched.
            Ok(false) => {
                let request = request.map(RequestBody::passthrough);
                return ResponseFuture::first(self.inner.call(request), None);
            }
            Err(insecure) => return ResponseFuture::failed(insecure.into()),
        }
        match settings.cache.cached() {
            // The common case: the token is at hand, so the service driven to ready is called
            // now and the future only waits for its response.
            Some(token) => {
                let (request, replay) = prepare(request, token, &self.shared);
                ResponseFuture::first(self.inner.call(request), replay)
            }
            // The service driven to ready goes into the future, which waits for a token first;
            // the clone left behind serves the next call.
            None => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let later = send_later(inner, Arc::clone(&self.shared), request);
                ResponseFuture::boxed(Box::pin(later))
            }
        }
    }
}

/// What a request keeps to be replayed after a rejection.
pub(crate) struct ReplayState<S> {
    shared: Arc<Shared<S>>,
    token: Snapshot,
    /// The request head as the caller made it, before any token header went on it.
    parts: http::request::Parts,
    tee: Option<Arc<Mutex<Tee>>>,
}

/// Puts the token on the request and keeps what a replay would need; keeps nothing when the
/// caller supplied its own credentials (a rejection is then not about our token).
fn prepare<S, ReqBody>(
    request: Request<ReqBody>,
    token: Snapshot,
    shared: &Arc<Shared<S>>,
) -> (Request<RequestBody<ReqBody>>, Option<Box<ReplayState<S>>>)
where
    ReqBody: Body,
{
    let (mut parts, body) = request.into_parts();
    // The copy kept for a replay is taken before the token goes on, and the request sent is the
    // caller's own, whose header map has room to grow.
    let original = parts.clone();
    if !token.apply_to(&mut parts.headers) {
        return (
            Request::from_parts(parts, RequestBody::passthrough(body)),
            None,
        );
    }
    let cap = shared.settings.policy.max_replay_body();
    let (body, tee) = if body.size_hint().lower() > cap as u64 {
        (RequestBody::passthrough(body), None)
    } else {
        let tee = Arc::new(Mutex::new(Tee::new(cap)));
        (RequestBody::teed(body, Arc::clone(&tee)), Some(tee))
    };
    // Boxed: the response future stays small, and is moved around cheaply, while it waits.
    let replay = Box::new(ReplayState {
        shared: Arc::clone(shared),
        token,
        parts: original,
        tee,
    });
    (Request::from_parts(parts, body), Some(replay))
}

/// A request that has to wait for a token.
async fn send_later<S, ReqBody, ResBody>(
    mut inner: S,
    shared: Arc<Shared<S>>,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let token = shared.settings.cache.get().await?;
    let (request, replay) = prepare(request, token, &shared);
    let response = inner.call(request).await.map_err(Into::into)?;
    match screen(response, replay) {
        Screened::Done(response) => Ok(response),
        Screened::Suspect(replay, response, verdict) => recover(replay, response, verdict).await,
    }
}

/// A first response, screened by status and headers.
// Returned once and taken apart at once: boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Screened<S, ResBody> {
    /// Not a rejection of our token: hand it to the caller.
    Done(Response<ResponseBody<ResBody>>),
    /// Possibly a rejection: [`recover`] decides.
    Suspect(Box<ReplayState<S>>, Response<ResBody>, Verdict),
}

pub(crate) fn screen<S, ResBody>(
    response: Response<ResBody>,
    replay: Option<Box<ReplayState<S>>>,
) -> Screened<S, ResBody> {
    let Some(replay) = replay else {
        return Screened::Done(response.map(ResponseBody::new));
    };
    let classifier = replay.shared.settings.policy.classifier();
    match classifier.classify(response.status(), response.headers()) {
        Verdict::Accepted => {
            record_acceptance(&replay.token, response.status());
            Screened::Done(response.map(ResponseBody::new))
        }
        verdict => Screened::Suspect(replay, response, verdict),
    }
}

/// The rejection path: confirms the rejection (reading the body if the classifier asks),
/// invalidates the token, and replays the request once with a fresh one if its body was kept.
pub(crate) async fn recover<S, ReqBody, ResBody>(
    replay: Box<ReplayState<S>>,
    response: Response<ResBody>,
    verdict: Verdict,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let ReplayState {
        shared,
        token,
        parts,
        tee,
    } = *replay;
    let (cache, policy) = (&shared.settings.cache, &shared.settings.policy);
    let (head, body) = response.into_parts();
    let mut body = ResponseBody::new(body);
    let rejected = match verdict {
        Verdict::Rejected => true,
        _ => {
            let start = body
                .inspect(policy.max_inspect_body())
                .await
                .map_err(Into::into)?;
            policy
                .classifier()
                .classify_body(head.status, &head.headers, &start)
        }
    };
    let mut rejection = Response::from_parts(head, body);
    if !rejected {
        record_acceptance(&token, rejection.status());
        return Ok(rejection);
    }

    let kept = match tee {
        Some(tee) => Tee::replay(&tee),
        None => Err(NotReplayed::BodyTooLarge),
    };
    let replacement = match kept {
        Ok(kept) => cache.replace(token.id()).await.map(|fresh| (kept, fresh)),
        Err(reason) => {
            cache.invalidate(token.id());
            Err(reason)
        }
    };
    let (kept, fresh) = match replacement {
        Ok(replacement) => replacement,
        Err(reason) => {
            tracing::debug!(token = %token.id(), %reason, "token rejected; request not replayed");
            rejection
                .extensions_mut()
                .insert(Replay::NotReplayed(reason));
            return Ok(rejection);
        }
    };
    drain(rejection.into_body()).await;

    let mut again = parts;
    fresh.apply_to(&mut again.headers);
    tracing::debug!(rejected = %token.id(), fresh = %fresh.id(), "token rejected; replaying");
    // tower's contract: a service is driven to ready before every call, the replay's too.
    let mut inner = shared.replay_service();
    let response = inner
        .ready()
        .await
        .map_err(Into::into)?
        .call(Request::from_parts(again, RequestBody::replay(kept)))
        .await
        .map_err(Into::into)?;
    if policy
        .classifier()
        .classify(response.status(), response.headers())
        == Verdict::Rejected
    {
        // A fresh token rejected too: no second replay. Invalidating it lets the cache's
        // fresh-rejection backoff protect the issuer if this keeps happening.
        cache.invalidate(fresh.id());
    } else {
        record_acceptance(&fresh, response.status());
    }
    let mut response = response.map(ResponseBody::new);
    response.extensions_mut().insert(Replay::Replayed {
        rejected: token.id(),
    });
    Ok(response)
}
