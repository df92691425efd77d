//! [`TokenMiddleware`].

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Error, Middleware, Next, Result};
use tokenwarden_core::{
    Classifier, InsecureTransport, LayerPolicy, NotReplayed, PrefixedBody, Replay, Scope,
    SkipToken, TokenCache, Verdict, drain, record_acceptance,
};

use crate::redirect::LeftScope;

/// Puts the cache's token on every request and replays requests whose token was rejected.
///
/// See the [crate docs](crate) for the behaviour and where it goes in a chain.
///
/// ```
/// use std::time::Duration;
/// use reqwest_middleware::ClientBuilder;
/// use tokenwarden_core::{FetchError, Scope, Token, TokenCache};
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
    cache: TokenCache,
    policy: LayerPolicy,
}

impl TokenMiddleware {
    /// A middleware that takes its tokens from `cache` and puts them on requests to the
    /// origins of `scope` only — requests anywhere else go through untouched. There is no
    /// default: name the API's origin ([`Scope::origin`]), or opt in to every origin with
    /// [`Scope::any_origin`].
    pub fn new(cache: TokenCache, scope: impl Into<Scope>) -> Self {
        Self {
            cache,
            policy: LayerPolicy::new(scope),
        }
    }

    /// Replaces the whole [`LayerPolicy`].
    #[must_use]
    pub fn with_policy(mut self, policy: LayerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Decides which responses mean the token was rejected. Default:
    /// [`DefaultClassifier`](tokenwarden_core::DefaultClassifier).
    #[must_use]
    pub fn with_classifier(mut self, classifier: impl Classifier) -> Self {
        self.policy = self.policy.with_classifier(classifier);
        self
    }

    /// Also treat `403 Forbidden` as a rejected token (with the default classifier).
    #[must_use]
    pub fn with_forbidden_as_rejection(mut self) -> Self {
        self.policy = self.policy.with_forbidden_as_rejection();
        self
    }

    /// How much of a response body a classifier that asks for it gets to see. Default 8 KiB.
    #[must_use]
    pub fn with_max_inspect_body(mut self, bytes: usize) -> Self {
        self.policy = self.policy.with_max_inspect_body(bytes);
        self
    }

    /// Allow tokens on plain `http://` requests to in-scope hosts that are not loopback. Off
    /// by default: such requests fail with [`InsecureTransport`] before they are sent. Only
    /// for a network you trust end to end: anyone on the path reads the token.
    #[must_use]
    pub fn with_insecure_http(mut self, allow: bool) -> Self {
        self.policy = self.policy.with_insecure_http(allow);
        self
    }

    /// Whether a request to `url` gets the token (`Ok(false)`: outside the scope).
    fn admit(&self, url: &reqwest::Url) -> std::result::Result<bool, InsecureTransport> {
        self.policy
            .admit(Some(url.scheme()), url.host_str(), url.port())
    }

    /// The client followed a redirect below this middleware: fails if it ended outside the
    /// scope or on plain text, where the token headers must not have gone.
    fn check_final(&self, response: &Response) -> Result<()> {
        match self.admit(response.url()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::middleware(LeftScope::new(response.url(), false))),
            Err(_) => Err(Error::middleware(LeftScope::new(response.url(), true))),
        }
    }

    /// The cache tokens come from.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Classifies a response, reading the start of its body if the classifier asks; returns
    /// the response (whole again) and whether it rejected the token.
    async fn screen(&self, response: Response) -> Result<(Response, bool)> {
        let classifier = self.policy.classifier();
        match classifier.classify(response.status(), response.headers()) {
            Verdict::Accepted => Ok((response, false)),
            Verdict::Rejected => Ok((response, true)),
            _ => {
                let (head, body) = http::Response::from(response).into_parts();
                let mut body = PrefixedBody::new(body);
                let start = body
                    .inspect(self.policy.max_inspect_body())
                    .await
                    .map_err(Error::Reqwest)?;
                let rejected = classifier.classify_body(head.status, &head.headers, &start);
                let body = reqwest::Body::wrap(body);
                Ok((
                    Response::from(http::Response::from_parts(head, body)),
                    rejected,
                ))
            }
        }
    }
}

#[async_trait]
impl Middleware for TokenMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        if extensions.get::<SkipToken>().is_some()
            || !self.admit(request.url()).map_err(Error::middleware)?
        {
            // Opted out, or outside the scope: untouched.
            return next.run(request, extensions).await;
        }
        let token = self.cache.get().await.map_err(Error::middleware)?;
        // The copy kept for a replay is taken before the token goes on; None for a body that
        // cannot be cloned, which is still sent, once.
        let original = request.try_clone();
        if !token.apply_to(request.headers_mut()) {
            // The caller sent its own credentials: a rejection is not about our token.
            let response = next.run(request, extensions).await?;
            self.check_final(&response)?;
            return Ok(response);
        }
        let response = next.clone().run(request, extensions).await?;
        self.check_final(&response)?;
        let (mut response, rejected) = self.screen(response).await?;
        if !rejected {
            record_acceptance(&token, response.status());
            return Ok(response);
        }

        let replacement = match original {
            Some(again) => self
                .cache
                .replace(token.id())
                .await
                .map(|fresh| (again, fresh)),
            None => {
                self.cache.invalidate(token.id());
                Err(NotReplayed::BodyNotReplayable)
            }
        };
        let (mut again, fresh) = match replacement {
            Ok(replacement) => replacement,
            Err(reason) => {
                tracing::debug!(token = %token.id(), %reason, "token rejected; request not replayed");
                response
                    .extensions_mut()
                    .insert(Replay::NotReplayed(reason));
                return Ok(response);
            }
        };
        drain(http::Response::from(response).into_body()).await;

        fresh.apply_to(again.headers_mut());
        tracing::debug!(rejected = %token.id(), fresh = %fresh.id(), "token rejected; replaying");
        let mut response = next.run(again, extensions).await?;
        self.check_final(&response)?;
        let classifier = self.policy.classifier();
        if classifier.classify(response.status(), response.headers()) == Verdict::Rejected {
            // A fresh token rejected too: no second replay; the cache's fresh-rejection
            // backoff protects the issuer if this keeps happening.
            self.cache.invalidate(fresh.id());
        } else {
            record_acceptance(&fresh, response.status());
        }
        response.extensions_mut().insert(Replay::Replayed {
            rejected: token.id(),
        });
        Ok(response)
    }
}
