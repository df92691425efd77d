//! [`TokenService`]: the middleware itself.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokenwarden_core::{KeyHandle, Snapshot, TokenCache};
use tokenwarden_http::adapter::{Choice, Engine};
use tokenwarden_http::{LayerPolicy, RequestView, SkipToken};
use tower::{BoxError, Service};

use crate::body::{CloneBody, KeepBody, Tee};
use crate::future::{Kept, ResponseFuture};

/// Puts the cache's token on every request to `S` and replays requests whose token was
/// rejected. Made by [`TokenLayer`](crate::TokenLayer), or directly with [`new`](Self::new).
pub struct TokenService<S, M = Tee> {
    inner: S,
    // One shared allocation: cloning the service per request touches one reference count.
    shared: Arc<Shared<S>>,
    mode: PhantomData<fn() -> M>,
}

/// What every clone of a service shares.
pub(crate) struct Shared<S> {
    pub(crate) engine: Engine,
    /// A clone of the inner service made when it was wrapped; replays go through clones of it
    /// (driven to ready first), so the common path never clones the inner service. In a mutex
    /// so that services that are `Send` but not `Sync` qualify.
    template: Mutex<S>,
}

impl<S: Clone> Shared<S> {
    pub(crate) fn replay_service(&self) -> S {
        self.template
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<S: Clone> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            template: Mutex::new(self.replay_service()),
        }
    }
}

impl<S: Clone> TokenService<S> {
    /// Wraps `inner`, taking tokens from `cache` for requests to the origins of `scope` (see
    /// [`TokenLayer::new`](crate::TokenLayer::new)).
    pub fn new(inner: S, cache: TokenCache, policy: impl Into<LayerPolicy>) -> Self {
        Self::with_engine(inner, Engine::new(cache, policy))
    }
}

impl<S: Clone, M> TokenService<S, M> {
    pub(crate) fn with_engine(inner: S, engine: Engine) -> Self {
        let template = inner.clone();
        Self {
            inner,
            shared: Arc::new(Shared {
                engine,
                template: Mutex::new(template),
            }),
            mode: PhantomData,
        }
    }

    /// Keeps request bodies for a replay by cloning them ([`CloneBody`]): `S` takes the
    /// caller's own body type (see [`TokenLayer::cloning_bodies`](crate::TokenLayer::cloning_bodies)).
    #[must_use]
    pub fn cloning_bodies(self) -> TokenService<S, CloneBody> {
        TokenService {
            inner: self.inner,
            shared: self.shared,
            mode: PhantomData,
        }
    }

    fn engine_mut(&mut self) -> &mut Engine {
        &mut Arc::make_mut(&mut self.shared).engine
    }

    /// The cache tokens come from (`None` for a keyed service, whose requests' keys choose).
    #[must_use]
    pub fn cache(&self) -> Option<&TokenCache> {
        self.engine().cache()
    }

    /// The policy: scope, classifier, body caps, inspection time, route names.
    #[must_use]
    pub fn policy(&self) -> &LayerPolicy {
        self.engine().policy()
    }

    /// Replaces the whole policy, scope included (see [`LayerPolicy`] for every setting).
    #[must_use]
    pub fn with_policy(mut self, policy: LayerPolicy) -> Self {
        self.engine_mut().edit_policy(|_| policy);
        self
    }
}

impl<S, M> TokenService<S, M> {
    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

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
}

impl<S: Clone, M> Clone for TokenService<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for TokenService<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService")
            .field("inner", &self.inner)
            .field("engine", &self.shared.engine)
            .finish_non_exhaustive()
    }
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for TokenService<S, M>
where
    M: KeepBody<ReqBody>,
    S: Service<Request<M::Sent>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<tokenwarden_http::ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqBody, ResBody, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let engine = &self.shared.engine;
        let admitted = engine.admit_uri(
            request.extensions().get::<SkipToken>().is_some(),
            request.uri(),
            request.headers(),
        );
        match admitted {
            Ok(true) => {}
            // Opted out, outside the scope (another host, a redirect's target) or carrying the
            // caller's own credentials: untouched, and no token fetched.
            Ok(false) => {
                return ResponseFuture::untouched(self.inner.call(M::passthrough(request)));
            }
            Err(insecure) => return ResponseFuture::failed(insecure.into()),
        }
        // A keyed layer: the request's key chooses the cache (no key: refused, unsent), and
        // hands over its token when this thread holds one.
        let (key, token) = match engine.choose(|| {
            RequestView::new(
                request.method(),
                request.uri().path(),
                request.headers(),
                request.extensions(),
            )
        }) {
            Ok(Choice::Engine) => (None, None),
            Ok(Choice::Key(handle, token)) => (Some(handle), token),
            Ok(Choice::OwnCredentials) => {
                return ResponseFuture::untouched(self.inner.call(M::passthrough(request)));
            }
            Err(error) => return ResponseFuture::failed(error.into()),
        };
        let Some(cache) = engine.cache_for(key.as_ref()) else {
            return ResponseFuture::failed("the token layer has no cache for this request".into());
        };
        // A keyed choice already looked (its thread's copy, else the key's cache).
        let token = if key.is_some() { token } else { cache.cached() };
        match token {
            // The common case: the token is at hand, so the service driven to ready is called
            // now and the future only waits for its response.
            Some(token) => match prepare::<M, ReqBody>(request, token, key, engine) {
                Ok((request, kept)) => {
                    let future = self.inner.call(request);
                    ResponseFuture::first(future, kept, Arc::clone(&self.shared))
                }
                Err(error) => ResponseFuture::failed(error.into()),
            },
            // The service driven to ready goes into the future, which waits for a token first;
            // the clone left behind serves the next call.
            None => {
                let fetch = cache.get_owned();
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(inner, request, fetch, key, Arc::clone(&self.shared))
            }
        }
    }
}

/// Puts the token (and for a DPoP-bound token, its proof) on the request and keeps what a
/// replay would need: the head as the caller made it (before the token went on) and the body
/// as `M` keeps it.
///
/// # Errors
///
/// When a DPoP proof cannot be made: nothing is sent.
#[inline]
#[allow(clippy::type_complexity)]
pub(crate) fn prepare<M, ReqBody>(
    request: Request<ReqBody>,
    token: Snapshot,
    key: Option<KeyHandle>,
    engine: &Engine,
) -> Result<(Request<M::Sent>, Box<Kept<ReqBody, M>>), tokenwarden_core::Error>
where
    M: KeepBody<ReqBody>,
{
    let (mut parts, body) = request.into_parts();
    // The copy kept for a replay is taken before the token goes on; the request sent is the
    // caller's own, whose header map has room to grow.
    let head = parts.clone();
    token.apply_to(&mut parts.headers);
    token.prove(
        parts.method.as_str(),
        || absolute(&parts.uri),
        None,
        &mut parts.headers,
    )?;
    let request = Request::from_parts(parts, body);
    let (request, body) = M::keep(request, engine.policy().max_replay_body());
    Ok((
        request,
        Box::new(Kept {
            token,
            head,
            body,
            key,
        }),
    ))
}

/// The request's absolute URL, for a DPoP proof (`None` for a URI without scheme and host).
pub(crate) fn absolute(uri: &http::Uri) -> Option<std::borrow::Cow<'static, str>> {
    (uri.scheme().is_some() && uri.authority().is_some()).then(|| uri.to_string().into())
}
