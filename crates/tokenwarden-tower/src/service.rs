//! [`TokenService`]: the middleware itself.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tokenwarden_core::{NotReplayed, Replay, SkipToken, TokenCache, Verdict, check_transport};
use tower::{BoxError, Service, ServiceExt};

use crate::body::{RequestBody, ResponseBody, Tee};
use crate::future::ResponseFuture;
use crate::layer::{DRAIN_LIMIT, Settings, settings_setters};

/// Puts the cache's token on every request to `S` and replays requests whose token was
/// rejected. Made by [`TokenLayer`](crate::TokenLayer).
#[derive(Clone, Debug)]
pub struct TokenService<S> {
    pub(crate) inner: S,
    pub(crate) settings: Settings,
}

impl<S> TokenService<S> {
    /// Wraps `inner`, taking tokens from `cache`.
    pub fn new(inner: S, cache: TokenCache) -> Self {
        Self {
            inner,
            settings: Settings::new(cache),
        }
    }

    settings_setters!();

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The cache tokens come from.
    pub fn cache(&self) -> &TokenCache {
        &self.settings.cache
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
    type Future = ResponseFuture<Self::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service driven to ready serves this call; the clone left behind serves the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        ResponseFuture {
            inner: Box::pin(send(inner, settings, request)),
        }
    }
}

async fn send<S, ReqBody, ResBody>(
    mut inner: S,
    settings: Settings,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let cache = &settings.cache;
    if request.extensions().get::<SkipToken>().is_some() || !settings.covers(request.uri()) {
        let response = inner.call(request.map(RequestBody::passthrough)).await;
        return response
            .map(|r| r.map(ResponseBody::new))
            .map_err(Into::into);
    }
    check_transport(request.uri(), settings.allow_insecure_http)?;
    let token = cache.get().await?;

    let (parts, body) = request.into_parts();
    // The replay needs the request as it was before any token header went on it, and a
    // second service driven to ready (tower's contract: never call a service not ready).
    let mut first = parts.clone();
    let applied = token.apply_to(&mut first.headers);
    let too_large = body.size_hint().lower() > settings.max_replay_body as u64;
    let (body, tee) = if !applied || too_large {
        (RequestBody::passthrough(body), None)
    } else {
        let tee = Arc::new(Mutex::new(Tee::default()));
        let body = RequestBody::teed(body, Arc::clone(&tee), settings.max_replay_body);
        (body, Some(tee))
    };
    let replay_service = inner.clone();
    let response = inner
        .call(Request::from_parts(first, body))
        .await
        .map_err(Into::into)?;
    if !applied {
        // The caller sent its own credentials: the response says nothing about our token.
        return Ok(response.map(ResponseBody::new));
    }

    let (head, body) = response.into_parts();
    let mut body = ResponseBody::new(body);
    let rejected = match settings.classifier.classify(head.status, &head.headers) {
        Verdict::Rejected => true,
        Verdict::Accepted => false,
        _ => {
            let start = body
                .inspect(settings.max_inspect_body)
                .await
                .map_err(Into::into)?;
            settings
                .classifier
                .classify_body(head.status, &head.headers, &start)
        }
    };
    let mut rejection = Response::from_parts(head, body);
    if !rejected {
        return Ok(rejection);
    }

    cache.invalidate(token.id());
    let kept = match tee {
        Some(tee) => Tee::replay(&tee),
        None => Err(NotReplayed::BodyTooLarge),
    };
    let kept = match kept {
        Ok(kept) => kept,
        Err(reason) => {
            tracing::debug!(token = %token.id(), %reason, "token rejected; request not replayed");
            rejection
                .extensions_mut()
                .insert(Replay::NotReplayed(reason));
            return Ok(rejection);
        }
    };
    let fresh = match cache.get().await {
        Ok(fresh) if fresh.id() == token.id() => {
            tracing::debug!(token = %token.id(), "token rejected again; the cache holds off replacing it");
            let reason = NotReplayed::StillRejected;
            rejection
                .extensions_mut()
                .insert(Replay::NotReplayed(reason));
            return Ok(rejection);
        }
        Ok(fresh) => fresh,
        Err(error) => {
            tracing::warn!(token = %token.id(), %error, "token rejected; no fresh token to replay with");
            let reason = NotReplayed::NoFreshToken(error.to_string());
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
    let mut replay_service = replay_service;
    let response = replay_service
        .ready()
        .await
        .map_err(Into::into)?
        .call(Request::from_parts(again, RequestBody::replay(kept)))
        .await
        .map_err(Into::into)?;
    if settings
        .classifier
        .classify(response.status(), response.headers())
        == Verdict::Rejected
    {
        // A fresh token rejected too: no second replay. Invalidating it lets the cache's
        // fresh-rejection backoff protect the issuer if this keeps happening.
        cache.invalidate(fresh.id());
    }
    let mut response = response.map(ResponseBody::new);
    response.extensions_mut().insert(Replay::Replayed {
        rejected: token.id(),
    });
    Ok(response)
}

/// Reads what is left of a rejected response (a small error body, usually) so the connection
/// can be reused; gives up on large or slow bodies.
async fn drain<B>(body: ResponseBody<B>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let limited = Limited::new(body, DRAIN_LIMIT);
    let _ = tokio::time::timeout(Duration::from_secs(1), limited.collect()).await;
}
