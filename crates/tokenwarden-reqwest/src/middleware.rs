//! [`TokenMiddleware`].

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response, ResponseBuilderExt, Url};
use reqwest_middleware::{Error, Middleware, Next, Result};
use std::hash::Hash;

use tokenwarden_core::{KeyedCache, TokenCache};
use tokenwarden_http::adapter::{Choice, ChooseCache, Engine, KeptBody, Recovered};
use tokenwarden_http::{
    LayerPolicy, NotReplayed, RequestBody, RequestView, ResponseBody, SkipToken, Verdict,
};
use tokenwarden_origin::InsecureTransport;

use crate::redirect::LeftScope;

/// Puts the cache's token on every request and replays requests whose token was rejected.
///
/// See the [crate docs](crate) for the behaviour and where it goes in a chain.
///
/// ```
/// use std::time::Duration;
/// use reqwest_middleware::ClientBuilder;
/// use tokenwarden_core::{FetchError, Token, TokenCache};
/// use tokenwarden_origin::Scope;
/// use tokenwarden_reqwest::TokenMiddleware;
///
/// let cache = TokenCache::new(|| async {
///     Ok::<_, FetchError>(Token::new("t0k3n").with_expires_in(Duration::from_secs(900)))
/// });
/// let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build()?)
///     .with(TokenMiddleware::new(cache, Scope::origin("https://api.example.com")?))
///     .build();
/// # let _ = client;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TokenMiddleware {
    engine: Engine,
}

impl TokenMiddleware {
    /// A middleware that takes its tokens from `cache` and puts them on requests to the
    /// origins of `scope` only — requests anywhere else go through untouched. There is no
    /// default: name the API's origin ([`Scope::origin`](tokenwarden_origin::Scope::origin)), or opt in to every origin with
    /// [`Scope::any_origin`](tokenwarden_origin::Scope::any_origin).
    pub fn new(cache: TokenCache, policy: impl Into<LayerPolicy>) -> Self {
        Self {
            engine: Engine::new(cache, policy),
        }
    }

    /// A middleware over many caches, one per key (a merchant, a tenant): each request's key
    /// comes from its [`TokenKey<K>`](tokenwarden_http::TokenKey) extension
    /// (`client.get(url).with_extension(TokenKey(merchant))`), and its token from that key's
    /// cache. A request in scope without a key fails with
    /// [`KeyError::Missing`](tokenwarden_http::KeyError) before anything is sent.
    pub fn keyed<K>(keyed: KeyedCache<K>, policy: impl Into<LayerPolicy>) -> Self
    where
        K: Clone + Hash + Eq + Send + Sync + 'static,
    {
        Self::choosing(tokenwarden_http::adapter::by_extension(keyed), policy)
    }

    /// A middleware over many caches whose keys come from `key`, a function of the request (a
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
        }
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The cache tokens come from (`None` for a keyed middleware, whose requests' keys choose).
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

    /// The client followed a redirect below this middleware: fails if it ended outside the
    /// scope or on plain text, where the token headers must not have gone.
    fn check_final(&self, response: &Response) -> Result<()> {
        let url = response.url();
        let policy = self.engine.policy();
        let admitted = policy
            .admit_spelled(url.scheme(), url.authority())
            .unwrap_or_else(|| policy.admit(Some(url.scheme()), url.host_str(), url.port()));
        match admitted {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::middleware(LeftScope::new(url, false))),
            Err(_) => Err(Error::middleware(LeftScope::new(url, true))),
        }
    }

    /// A copy of the request to replay (taken before the token goes on), or why there is none.
    /// An in-memory body is shared by reference count; a stream is copied aside as it is
    /// sent, up to the replay cap, exactly as the tower layer does.
    fn keep(&self, request: &mut Request) -> std::result::Result<Kept, NotReplayed> {
        let cap = self.engine.policy().max_replay_body();
        match request.body().map(reqwest::Body::as_bytes) {
            Some(Some(bytes)) if bytes.len() > cap => Err(NotReplayed::BodyTooLarge),
            Some(None) => {
                let Some(stream) = request.body_mut().take() else {
                    return Err(NotReplayed::BodyNotReplayable);
                };
                let (teed, kept) = RequestBody::keep(stream, cap);
                // Without its body, the request clones.
                let copy = request.try_clone();
                *request.body_mut() = Some(reqwest::Body::wrap(teed));
                copy.map(|copy| (copy, Some(kept)))
                    .ok_or(NotReplayed::BodyNotReplayable)
            }
            _ => request
                .try_clone()
                .map(|copy| (copy, None))
                .ok_or(NotReplayed::BodyNotReplayable),
        }
    }
}

/// Puts a fresh DPoP proof on the request, for a DPoP-bound token (nothing otherwise), with
/// `nonce` if a challenge named one.
fn prove(
    token: &tokenwarden_core::Snapshot,
    request: &mut Request,
    nonce: Option<&http::HeaderValue>,
) -> Result<()> {
    if token.is_dpop() {
        // The headers taken out (an empty map allocates nothing), so the URL and method are
        // read where they are, not copied.
        let mut headers = std::mem::take(request.headers_mut());
        let proved = token.prove(
            request.method().as_str(),
            || Some(request.url().as_str().into()),
            nonce,
            &mut headers,
        );
        *request.headers_mut() = headers;
        proved.map_err(Error::middleware)?;
    }
    Ok(())
}

/// A copy of a request, and the stream body copied aside for it if it had one.
type Kept = (Request, Option<KeptBody>);

/// The request to send again, once the first attempt was answered (a stream copied aside is
/// complete only then).
fn replayable(kept: Kept) -> std::result::Result<Request, NotReplayed> {
    let (mut request, stream) = kept;
    if let Some(stream) = stream {
        let body = stream.replay::<reqwest::Body>()?;
        *request.body_mut() = Some(reqwest::Body::wrap(body));
    }
    Ok(request)
}

/// A response that went through `http::Response` back as a `reqwest::Response`, with its URL
/// (and everything else it had: headers, extensions, version) as before.
fn restore(response: http::Response<ResponseBody<reqwest::Body>>, url: Url) -> Response {
    let (mut parts, body) = response.into_parts();
    if let Ok(marker) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(marker.into_parts().0.extensions);
    }
    Response::from(http::Response::from_parts(parts, reqwest::Body::wrap(body)))
}

#[async_trait]
impl Middleware for TokenMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let url = request.url();
        let admitted = self
            .engine
            .admit(
                extensions.get::<SkipToken>().is_some(),
                Some(url.scheme()),
                Some(url.authority()),
                || (url.host_str(), url.port()),
                request.headers(),
            )
            .map_err(|e: InsecureTransport| Error::middleware(e))?;
        if !admitted {
            // Opted out, outside the scope, or carrying the caller's own credentials:
            // untouched, and no token fetched.
            return next.run(request, extensions).await;
        }
        // Could never be sent: said plainly, before a token is fetched.
        crate::tls::check(request.url(), tokenwarden_origin::reqwest_has_tls())
            .map_err(Error::middleware)?;
        // A keyed middleware: the request's key chooses the cache (no key: refused, unsent).
        let url = request.url();
        let choice = self.engine.choose(|| {
            RequestView::new(request.method(), url.path(), request.headers(), extensions)
        });
        let (key, chosen) = match choice.map_err(Error::middleware)? {
            Choice::Engine => (None, None),
            Choice::Key(handle, token) => (Some(handle), token),
            Choice::OwnCredentials => return next.run(request, extensions).await,
        };
        let Some(cache) = self.engine.cache_for(key.as_ref()) else {
            return Err(Error::middleware(tokenwarden_http::KeyError::Missing));
        };
        let token = match chosen {
            Some(token) => token,
            None => cache.get().await.map_err(Error::middleware)?,
        };
        let kept = self.keep(&mut request);
        // Cheap for the standard methods (no allocation); read only after a rejection.
        let method = request.method().clone();
        token.apply_to(request.headers_mut());
        prove(&token, &mut request, None)?;
        let response = next.clone().run(request, extensions).await?;
        self.check_final(&response)?;
        token.observe(response.headers(), || Some(response.url().as_str().into()));
        let verdict = self
            .engine
            .screen(&token, response.status(), response.headers());
        if verdict == Verdict::Accepted {
            return Ok(response);
        }

        let url = response.url().clone();
        let route = self.engine.policy().route(method.as_str(), url.path());
        let response = http::Response::from(response);
        let again = kept.and_then(replayable);
        let (mut again, fresh, rejected, key, nonce) = match self
            .engine
            .recover(token, response, verdict, again, key, route)
            .await
        {
            Recovered::Respond(response) => return Ok(restore(response, url)),
            Recovered::Replay {
                kept,
                fresh,
                rejected,
                key,
                nonce,
            } => (kept, fresh, rejected, key, nonce),
        };
        fresh.apply_to(again.headers_mut());
        prove(&fresh, &mut again, nonce.as_ref())?;
        let mut response = next.run(again, extensions).await?;
        self.check_final(&response)?;
        fresh.observe(response.headers(), || Some(response.url().as_str().into()));
        let marker = self.engine.replayed(
            key.as_ref(),
            rejected,
            &fresh,
            response.status(),
            response.headers(),
            route,
        );
        response.extensions_mut().insert(marker);
        Ok(response)
    }
}
