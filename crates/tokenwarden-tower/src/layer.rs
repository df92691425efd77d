//! [`TokenLayer`].

use std::fmt;
use std::marker::PhantomData;

use std::hash::Hash;

use tokenwarden_core::{KeyedCache, TokenCache};
use tokenwarden_http::adapter::{ChooseCache, Engine};
use tokenwarden_http::{LayerPolicy, RequestView};
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
    /// ([`Scope::origin`](tokenwarden_origin::Scope::origin)), or opt in to every origin with
    /// [`Scope::any_origin`](tokenwarden_origin::Scope::any_origin).
    pub fn new(cache: TokenCache, policy: impl Into<LayerPolicy>) -> Self {
        Self {
            engine: Engine::new(cache, policy),
            mode: PhantomData,
        }
    }

    /// A layer over many caches, one per key (a merchant, a tenant): each request's key comes
    /// from its [`TokenKey<K>`](tokenwarden_http::TokenKey) extension, and its token from that
    /// key's cache. A request in scope without a key fails with
    /// [`KeyError::Missing`](tokenwarden_http::KeyError) before anything is sent.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenwarden_core::{FetchError, KeyedCache, Token, TokenCache};
    /// use tokenwarden_origin::Scope;
    /// use tokenwarden_http::TokenKey;
    /// use tokenwarden_tower::TokenLayer;
    ///
    /// let merchants = KeyedCache::builder()
    ///     .with_factory(|merchant: &String| {
    ///         let merchant = merchant.clone();
    ///         Ok(TokenCache::builder(move || {
    ///             let token = format!("for-{merchant}");
    ///             async move { Ok::<_, FetchError>(Token::new(token).with_expires_in(Duration::from_secs(600))) }
    ///         }))
    ///     })
    ///     .build();
    /// let layer = TokenLayer::keyed(merchants, Scope::origin("https://api.example.com")?);
    /// // per request:
    /// let mut request = http::Request::new(());
    /// request.extensions_mut().insert(TokenKey("m-1001".to_owned()));
    /// # let _ = (layer, request);
    /// # Ok::<_, tokenwarden_core::ConfigError>(())
    /// ```
    pub fn keyed<K>(keyed: KeyedCache<K>, policy: impl Into<LayerPolicy>) -> Self
    where
        K: Clone + Hash + Eq + Send + Sync + 'static,
    {
        Self::choosing(tokenwarden_http::adapter::by_extension(keyed), policy)
    }

    /// A layer over many caches whose keys come from `key`, a function of the request (a
    /// header, a path segment); `None` refuses the request, unsent.
    pub fn keyed_by<K, F>(keyed: KeyedCache<K>, policy: impl Into<LayerPolicy>, key: F) -> Self
    where
        K: Clone + Hash + Eq + Send + Sync + 'static,
        F: Fn(&RequestView<'_>) -> Option<K> + Send + Sync + 'static,
    {
        Self::choosing(tokenwarden_http::adapter::by_key(keyed, key), policy)
    }

    fn choosing(keys: impl ChooseCache, policy: impl Into<LayerPolicy>) -> Self {
        Self {
            engine: Engine::keyed(keys, policy),
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

    /// The cache tokens come from (`None` for a keyed layer, whose requests' keys choose).
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
