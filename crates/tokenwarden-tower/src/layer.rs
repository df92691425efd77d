//! [`TokenLayer`].

use std::fmt;
use std::marker::PhantomData;

use tokenwarden_core::{Scope, TokenCache};
use tokenwarden_http::Engine;
use tower::Layer;

use crate::TokenService;
use crate::body::{CloneBody, Tee};

/// Puts the cache's token on every request and replays requests whose token was rejected.
///
/// `M` says how a request body is kept for a replay: [`Tee`] (the default; the inner service
/// takes [`RequestBody<B>`](crate::RequestBody)) or, after
/// [`cloning_bodies`](Self::cloning_bodies), [`CloneBody`] (the inner service takes the
/// caller's body type as it is). See the [crate docs](crate) for the behaviour and an example.
pub struct TokenLayer<M = Tee> {
    engine: Engine,
    mode: PhantomData<fn() -> M>,
}

impl TokenLayer {
    /// A layer that takes its tokens from `cache` and puts them on requests to the origins of
    /// `scope` only — requests anywhere else (such as a redirect's target) go through
    /// untouched. There is no default: name the API's origin
    /// ([`Scope::origin`](tokenwarden_core::Scope::origin)), or opt in to every origin with
    /// [`Scope::any_origin`](tokenwarden_core::Scope::any_origin).
    pub fn new(cache: TokenCache, scope: impl Into<Scope>) -> Self {
        Self {
            engine: Engine::new(cache, scope),
            mode: PhantomData,
        }
    }
}

impl<M> TokenLayer<M> {
    /// Keeps request bodies for a replay by cloning them ([`CloneBody`]): the inner service
    /// takes the caller's own body type, so an existing client keeps its type. For bodies
    /// that are cheap to clone, such as `Full<Bytes>`.
    #[must_use]
    pub fn cloning_bodies(self) -> TokenLayer<CloneBody> {
        TokenLayer {
            engine: self.engine,
            mode: PhantomData,
        }
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    tokenwarden_http::__layer_settings!();
}

impl<M> Clone for TokenLayer<M> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for TokenLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLayer")
            .field("engine", &self.engine)
            .field("bodies", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S: Clone, M> Layer<S> for TokenLayer<M> {
    type Service = TokenService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenService::with_engine(inner, self.engine.clone())
    }
}
