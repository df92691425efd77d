//! A real, independently written OAuth 2.0 server on loopback (the `oauth2-server` feature):
//! `oauth2-mock-server` on Node.js, configured by `interop/oauth2-server/server.mjs`.

use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::{Answer, LoopbackApi};

/// How to get the server, for every message that says it is missing.
const HOW_TO_INSTALL: &str = "the OAuth 2.0 interop tests run oauth2-mock-server (npm) on \
     Node.js 20.19+, 22.12+ or 24: install Node.js (https://nodejs.org; where only an older \
     npm exists, `npm install -g node@22`), then run `scripts/install-oauth2-server.sh` from the \
     repository root";

/// `oauth2-mock-server` running on a loopback port, stopped when dropped.
///
/// Its token endpoint is `{issuer}/token`, its keys `{issuer}/jwks`, its metadata
/// `{issuer}/.well-known/openid-configuration`. A control endpoint sets what it does:
/// [`configure`](Self::configure) (clients, allowed scopes, token lifetime, the shape of
/// `expires_in`, `token_type`), [`script`](Self::script) (answers for the next token
/// requests), [`requests`](Self::requests) (every token request: how the client
/// authenticated and what it asked for), [`stop`](Self::stop) and [`restart`](Self::restart)
/// (a real outage on the same port).
///
/// By default one client is known: id `app`, secret `s3cr3t`; tokens live an hour.
#[derive(Debug)]
pub struct OAuth2Server {
    child: Child,
    issuer: String,
    control: String,
    client: reqwest::Client,
}

impl OAuth2Server {
    /// Starts the server (installing its npm packages first if needed).
    ///
    /// # Panics
    ///
    /// If Node.js or the server is missing or cannot be installed (the message says how to
    /// install them), or the server does not come up within 30 s.
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .expect("starting the OAuth 2.0 server")
    }

    fn start_blocking() -> Self {
        let (child, started) = crate::node_server::start(
            "oauth2-server",
            "install-oauth2-server.sh",
            &[],
            "the OAuth 2.0 server",
            HOW_TO_INSTALL,
        );
        let text = |key: &str| {
            started[key]
                .as_str()
                .unwrap_or_else(|| panic!("the server's start line lacks {key}: {started}"))
                .trim_end_matches('/')
                .to_owned()
        };
        Self {
            issuer: text("issuer"),
            control: text("control"),
            client: reqwest::Client::new(),
            child,
        }
    }

    /// The issuer URL (`http://localhost:<port>`).
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint.
    #[must_use]
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    async fn call(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.control);
        let request = match body {
            Some(body) => self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
            None => self.client.get(url),
        };
        let response = request.send().await.expect("the control endpoint answers");
        assert!(
            response.status().is_success(),
            "control {path}: {}",
            response.status()
        );
        let bytes = response.bytes().await.expect("control answer");
        serde_json::from_slice(&bytes).expect("control answers JSON")
    }

    /// Merges `settings` into the server's: `clients` (`{id: secret}`), `allowedScopes` and
    /// `allowedResources` (lists, or `null` for any; others are answered `invalid_scope` and
    /// `invalid_target`), `ttl` (seconds, for `exp` and `expires_in`), `expiresIn`
    /// (`"number"`, `"string"` or `"absent"`), `expiresInExtra` (seconds `expires_in` adds to
    /// `ttl`), `tokenType`, `echoCredentials` (`invalid_client` quotes the secret it was given).
    pub async fn configure(&self, settings: Value) {
        self.call("/config", Some(settings)).await;
    }

    /// The next token requests get these answers, in order (`{status, body, headers}` each),
    /// whatever they carry.
    pub async fn script(&self, responses: Vec<Value>) {
        self.call(
            "/script",
            Some(serde_json::json!({ "responses": responses })),
        )
        .await;
    }

    /// Every token request so far: `{at (ms since the epoch), method ("basic", "post" or
    /// "none"), client_id, grant_type, scope, audience, resource, content_type}`.
    pub async fn requests(&self) -> Vec<Value> {
        match self.call("/requests", None).await {
            Value::Array(requests) => requests,
            other => panic!("requests: {other}"),
        }
    }

    /// The server's signing keys (its JWKS document).
    pub async fn jwks(&self) -> Value {
        let response = self
            .client
            .get(format!("{}/jwks", self.issuer))
            .send()
            .await
            .expect("the JWKS endpoint answers");
        serde_json::from_slice(&response.bytes().await.expect("JWKS")).expect("JWKS is JSON")
    }

    /// Stops the OAuth server (its port closes; the control endpoint stays).
    pub async fn stop(&self) {
        self.call("/stop", Some(Value::Null)).await;
    }

    /// Starts it again on the same port, with the same keys.
    pub async fn restart(&self) {
        self.call("/start", Some(Value::Null)).await;
    }
}

impl Drop for OAuth2Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API on loopback that accepts a request only with a bearer token the [`OAuth2Server`]
/// signed (checked against its JWKS), from that issuer, not expired (no leeway) and not
/// revoked here; counts what it accepted and refused.
#[derive(Debug)]
pub struct JwtApi {
    api: LoopbackApi,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    /// Tokens seen, and whether they are revoked.
    tokens: Arc<Mutex<HashMap<String, bool>>>,
}

impl JwtApi {
    /// Starts the API, trusting `server`'s keys.
    ///
    /// # Panics
    ///
    /// If the server's JWKS cannot be read.
    pub async fn start(server: &OAuth2Server) -> Self {
        let jwks: JwkSet = serde_json::from_value(server.jwks().await).expect("a JWKS");
        let key = DecodingKey::from_jwk(&jwks.keys[0]).expect("an RS256 key");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[server.issuer()]);
        validation.validate_aud = false;
        validation.leeway = 0;
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let tokens = Arc::new(Mutex::new(HashMap::new()));
        let (a, r, t) = (
            Arc::clone(&accepted),
            Arc::clone(&refused),
            Arc::clone(&tokens),
        );
        let api = LoopbackApi::start(move |received| {
            let bearer = received
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            let decoded = jsonwebtoken::decode::<Value>(bearer, &key, &validation);
            if let Err(error) = &decoded {
                tracing::debug!(error = %error, "JwtApi: token refused");
            }
            let valid = decoded.is_ok();
            let revoked = valid
                && *t
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(bearer.to_owned())
                    .or_insert(false);
            if revoked {
                tracing::debug!("JwtApi: revoked token refused");
            }
            if valid && !revoked {
                a.fetch_add(1, SeqCst);
                Answer::new(200, "ok")
            } else {
                r.fetch_add(1, SeqCst);
                Answer::new(401, "invalid token")
            }
        })
        .await;
        Self {
            api,
            accepted,
            refused,
            tokens,
        }
    }

    /// The API's origin.
    #[must_use]
    pub fn origin(&self) -> String {
        self.api.origin()
    }

    /// A URL on the API.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// Requests accepted.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }

    /// Requests refused with a `401` (no token, a bad or expired one, or a revoked one).
    #[must_use]
    pub fn refused(&self) -> usize {
        self.refused.load(SeqCst)
    }

    /// Every token seen so far is refused from now on (a mass revocation).
    pub fn revoke_all(&self) {
        for revoked in self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values_mut()
        {
            *revoked = true;
        }
    }
}
