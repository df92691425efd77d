//! [`TokenMiddleware`].

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Error, Middleware, Next, Result};
use tokenwarden_core::{
    Classifier, LayerPolicy, NotReplayed, PrefixedBody, Replay, SkipToken, TokenCache, Verdict,
    drain,
};

/// Puts the cache's token on every request and replays requests whose token was rejected.
///
/// See the [crate docs](crate) for the behaviour and where it goes in a chain.
///
/// ```
/// use std::time::Duration;
/// use reqwest_middleware::ClientBuilder;
/// use tokenwarden_core::{FetchError, Token, TokenCache};
/// use tokenwarden_reqwest::TokenMiddleware;
///
/// let cache = TokenCache::new(|| async {
///     Ok::<_, FetchError>(Token::new("t0k3n").with_expires_in(Duration::from_secs(900)))
/// });
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(TokenMiddleware::new(cache).with_origin(&"https://api.example.com".parse().unwrap()))
///     .build();
/// # let _ = client;
/// ```
#[derive(Clone, Debug)]
pub struct TokenMiddleware {
    cache: TokenCache,
    policy: LayerPolicy,
}

impl TokenMiddleware {
    /// A middleware that takes its tokens from `cache`.
    pub fn new(cache: TokenCache) -> Self {
        Self {
            cache,
            policy: LayerPolicy::default(),
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

    /// Allow tokens on plain `http://` requests to hosts that are not loopback.
    #[must_use]
    pub fn with_insecure_http(mut self, allow: bool) -> Self {
        self.policy = self.policy.with_insecure_http(allow);
        self
    }

    /// Only requests to this origin get tokens; call again to add origins.
    #[must_use]
    pub fn with_origin(mut self, origin: &http::Uri) -> Self {
        self.policy = self.policy.with_origin(origin);
        self
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
        let url = request.url();
        let (scheme, authority) = (Some(url.scheme()), Some(url.authority()));
        if extensions.get::<SkipToken>().is_some() || !self.policy.covers(scheme, authority) {
            return next.run(request, extensions).await;
        }
        self.policy
            .check_transport(scheme, authority)
            .map_err(Error::middleware)?;
        let token = self.cache.get().await.map_err(Error::middleware)?;
        // The copy kept for a replay is taken before the token goes on; None for a body that
        // cannot be cloned, which is still sent, once.
        let original = request.try_clone();
        if !token.apply_to(request.headers_mut()) {
            // The caller sent its own credentials: a rejection is not about our token.
            return next.run(request, extensions).await;
        }
        let response = next.clone().run(request, extensions).await?;
        let (mut response, rejected) = self.screen(response).await?;
        if !rejected {
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
        let classifier = self.policy.classifier();
        if classifier.classify(response.status(), response.headers()) == Verdict::Rejected {
            // A fresh token rejected too: no second replay; the cache's fresh-rejection
            // backoff protects the issuer if this keeps happening.
            self.cache.invalidate(fresh.id());
        }
        response.extensions_mut().insert(Replay::Replayed {
            rejected: token.id(),
        });
        Ok(response)
    }
}
