//! The sandbox server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokenwarden_gateways::boipa::BoipaConfig;
use tokenwarden_gateways::sipay::SipayConfig;
use tokenwarden_gateways::torus::TorusConfig;
use tokio::task::JoinHandle;

/// The sandbox's own credentials: not secrets, and accepted nowhere else.
pub mod credentials {
    /// BOIPA `merchantId`.
    pub const BOIPA_MERCHANT_ID: u64 = 1_234_567;
    /// BOIPA `password`.
    pub const BOIPA_PASSWORD: &str = "sandbox-boipa-password";
    /// Torus request token.
    pub const TORUS_REQUEST_TOKEN: &str = "sandbox-torus-request-token";
    /// Torus `API_KEY`.
    pub const TORUS_API_KEY: &str = "sandbox-torus-key";
    /// Torus `API_SECRET`.
    pub const TORUS_API_SECRET: &str = "sandbox-torus-secret";
    /// Sipay `app_id`.
    pub const SIPAY_APP_ID: &str = "sandbox-sipay-app";
    /// Sipay `app_secret`.
    pub const SIPAY_APP_SECRET: &str = "sandbox-sipay-secret";
    /// The Payments API merchant identifier (FNS number).
    pub const PAYMENTS_MERCHANT: &str = "FNS-000042";
    /// A Payments API authentication token registered at start.
    pub const PAYMENTS_AUTHENTICATION_TOKEN: &str = "sandbox-authentication-token-1";

    /// One merchant's credentials at every gateway of the sandbox.
    ///
    /// Merchant 0 has the constants above; merchant `n` has the same values with `-m{n}` after
    /// them (its BOIPA merchant id is `BOIPA_MERCHANT_ID + n`). A sandbox started with
    /// [`SandboxConfig::with_merchants`](crate::SandboxConfig::with_merchants)`(k)` accepts
    /// merchants `0..k`, and each gateway's API accepts a token only with the merchant it was
    /// issued to.
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub struct Merchant {
        /// Its number, `0..merchants`.
        pub index: usize,
        /// BOIPA `merchantId`.
        pub boipa_merchant_id: u64,
        /// BOIPA `password`.
        pub boipa_password: String,
        /// Torus request token.
        pub torus_request_token: String,
        /// Torus `API_KEY`.
        pub torus_api_key: String,
        /// Torus `API_SECRET`.
        pub torus_api_secret: String,
        /// Sipay `app_id`.
        pub sipay_app_id: String,
        /// Sipay `app_secret`.
        pub sipay_app_secret: String,
        /// Payments API merchant identifier (FNS number).
        pub payments_merchant: String,
        /// Its Payments API authentication token, registered at start.
        pub payments_authentication_token: String,
    }

    /// Merchant `index`'s credentials.
    #[must_use]
    pub fn merchant(index: usize) -> Merchant {
        let suffix = |value: &str| {
            if index == 0 {
                value.to_owned()
            } else {
                format!("{value}-m{index}")
            }
        };
        Merchant {
            index,
            boipa_merchant_id: BOIPA_MERCHANT_ID + index as u64,
            boipa_password: suffix(BOIPA_PASSWORD),
            torus_request_token: suffix(TORUS_REQUEST_TOKEN),
            torus_api_key: suffix(TORUS_API_KEY),
            torus_api_secret: suffix(TORUS_API_SECRET),
            sipay_app_id: suffix(SIPAY_APP_ID),
            sipay_app_secret: suffix(SIPAY_APP_SECRET),
            payments_merchant: suffix(PAYMENTS_MERCHANT),
            payments_authentication_token: suffix(PAYMENTS_AUTHENTICATION_TOKEN),
        }
    }
}

use credentials::*;

/// One of the emulated token systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gateway {
    /// BOIPA session tokens (single-use).
    Boipa,
    /// Torus access tokens.
    Torus,
    /// Sipay tokens (JWT).
    Sipay,
    /// Payments API session tokens.
    Payments,
}

impl Gateway {
    /// Every gateway.
    pub const ALL: [Gateway; 4] = [
        Gateway::Boipa,
        Gateway::Torus,
        Gateway::Sipay,
        Gateway::Payments,
    ];

    fn prefix(self) -> &'static str {
        match self {
            Gateway::Boipa => "boipa",
            Gateway::Torus => "torus",
            Gateway::Sipay => "sipay",
            Gateway::Payments => "payments",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Gateway::Boipa => "BOIPA",
            Gateway::Torus => "Torus",
            Gateway::Sipay => "Sipay",
            Gateway::Payments => "Payments API",
        })
    }
}

/// A fault the next token request(s) of a gateway answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer correctly, after this delay.
    Slow(Duration),
    /// HTTP 503.
    ServerError,
    /// HTTP 200 with a body that is not the documented JSON.
    Malformed,
    /// Refuse the credentials the way the gateway does.
    RejectCredentials,
}

/// What the sandbox saw of one gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayStats {
    /// Requests to the token endpoint.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Requests to the protected API.
    pub api_requests: u64,
    /// API requests answered 401.
    pub unauthorized: u64,
}

/// Settings of a sandbox.
#[derive(Clone, Copy, Debug)]
pub struct SandboxConfig {
    /// How long issued tokens are valid. Default 60 s.
    pub token_lifetime: Duration,
    /// How many merchants each gateway knows ([`credentials::merchant`]`(0..merchants)`).
    /// Default 1.
    pub merchants: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(60),
            merchants: 1,
        }
    }
}

impl SandboxConfig {
    /// Sets how long issued tokens are valid.
    #[must_use]
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Sets how many merchants each gateway knows (at least 1).
    #[must_use]
    pub fn with_merchants(mut self, merchants: usize) -> Self {
        self.merchants = merchants.max(1);
        self
    }
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    tokens_issued: AtomicU64,
    api_requests: AtomicU64,
    unauthorized: AtomicU64,
}

struct Issued {
    gateway: Gateway,
    expires: SystemTime,
    single_use: bool,
    used: bool,
    /// For Payments session tokens: the authentication token that minted it.
    parent: Option<String>,
    /// The merchant it was issued to.
    merchant: usize,
}

/// Who is who: each gateway's identifying credential → the merchant.
struct Directory {
    merchants: Vec<Merchant>,
    boipa: HashMap<u64, usize>,
    torus: HashMap<String, usize>,
    sipay: HashMap<String, usize>,
}

impl Directory {
    fn new(count: usize) -> Self {
        let merchants: Vec<Merchant> = (0..count.max(1)).map(merchant).collect();
        let index = |f: fn(&Merchant) -> &String| {
            merchants
                .iter()
                .map(|m| (f(m).clone(), m.index))
                .collect::<HashMap<_, _>>()
        };
        Self {
            boipa: merchants
                .iter()
                .map(|m| (m.boipa_merchant_id, m.index))
                .collect(),
            torus: index(|m| &m.torus_api_key),
            sipay: index(|m| &m.sipay_app_id),
            merchants,
        }
    }
}

struct State {
    lifetime_ms: AtomicU64,
    next: AtomicU64,
    tokens: Mutex<HashMap<String, Issued>>,
    faults: Mutex<HashMap<Gateway, Vec<Fault>>>,
    /// Payments API authentication tokens → (active, the merchant they belong to).
    authentication_tokens: Mutex<HashMap<String, (bool, usize)>>,
    directory: Directory,
    counters: [Counters; 4],
    /// Per gateway, per merchant.
    merchant_counters: [Vec<Counters>; 4],
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Sandbox {
    /// Starts a sandbox with the default settings on an ephemeral loopback port.
    ///
    /// # Errors
    ///
    /// The I/O error if no loopback port could be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(SandboxConfig::default()).await
    }

    /// Starts a sandbox with `config`.
    ///
    /// # Errors
    ///
    /// The I/O error if no loopback port could be bound.
    pub async fn start_with(config: SandboxConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let directory = Directory::new(config.merchants);
        let state = Arc::new(State {
            lifetime_ms: AtomicU64::new(config.token_lifetime.as_millis() as u64),
            next: AtomicU64::new(0),
            tokens: Mutex::default(),
            faults: Mutex::default(),
            authentication_tokens: Mutex::new(
                directory
                    .merchants
                    .iter()
                    .map(|m| (m.payments_authentication_token.clone(), (true, m.index)))
                    .collect(),
            ),
            merchant_counters: std::array::from_fn(|_| {
                (0..directory.merchants.len())
                    .map(|_| Counters::default())
                    .collect()
            }),
            directory,
            counters: Default::default(),
        });
        let serving = Arc::clone(&state);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The sandbox's origin as a token scope, for a layer or middleware in front of its APIs.
    ///
    /// # Errors
    ///
    /// None in practice: the origin is `http://127.0.0.1:<port>`.
    pub fn scope(&self) -> Result<tokenwarden_origin::Scope, tokenwarden_core::ConfigError> {
        tokenwarden_origin::Scope::origin(&self.url())
    }

    /// The base URL a gateway's source takes, e.g. `http://127.0.0.1:<port>/sipay`.
    #[must_use]
    pub fn base_url(&self, gateway: Gateway) -> String {
        format!("{}/{}", self.url(), gateway.prefix())
    }

    /// A URL of the protected API of `gateway`, e.g. `…/sipay/api/orders` for `"orders"`.
    #[must_use]
    pub fn api_url(&self, gateway: Gateway, path: &str) -> String {
        format!(
            "{}/api/{}",
            self.base_url(gateway),
            path.trim_start_matches('/')
        )
    }

    /// A BOIPA configuration with the sandbox's credentials (merchant 0).
    #[must_use]
    pub fn boipa_config(&self) -> BoipaConfig {
        self.boipa_config_for(0)
    }

    /// A Torus configuration with the sandbox's credentials (merchant 0).
    #[must_use]
    pub fn torus_config(&self) -> TorusConfig {
        self.torus_config_for(0)
    }

    /// A Sipay configuration with the sandbox's credentials (merchant 0).
    #[must_use]
    pub fn sipay_config(&self) -> SipayConfig {
        self.sipay_config_for(0)
    }

    /// How many merchants each gateway knows.
    #[must_use]
    pub fn merchants(&self) -> usize {
        self.state.directory.merchants.len()
    }

    /// A BOIPA configuration with merchant `index`'s credentials ([`credentials::merchant`]).
    #[must_use]
    pub fn boipa_config_for(&self, index: usize) -> BoipaConfig {
        let m = merchant(index);
        BoipaConfig::new(
            self.base_url(Gateway::Boipa),
            m.boipa_merchant_id,
            m.boipa_password,
            "https://shop.example",
        )
    }

    /// A Torus configuration with merchant `index`'s credentials.
    #[must_use]
    pub fn torus_config_for(&self, index: usize) -> TorusConfig {
        let m = merchant(index);
        TorusConfig::new(
            self.base_url(Gateway::Torus),
            m.torus_request_token,
            m.torus_api_key,
            m.torus_api_secret,
        )
    }

    /// A Sipay configuration with merchant `index`'s credentials.
    #[must_use]
    pub fn sipay_config_for(&self, index: usize) -> SipayConfig {
        let m = merchant(index);
        SipayConfig::new(
            self.base_url(Gateway::Sipay),
            m.sipay_app_id,
            m.sipay_app_secret,
        )
    }

    /// Sets the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state
            .lifetime_ms
            .store(lifetime.as_millis() as u64, Relaxed);
    }

    /// Makes the next `times` token requests of `gateway` answer with `fault`.
    pub fn inject(&self, gateway: Gateway, fault: Fault, times: usize) {
        let mut faults = self
            .state
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        faults
            .entry(gateway)
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Forgets every token `gateway` issued: the API answers 401 to all of them from now on.
    pub fn expire_tokens(&self, gateway: Gateway) {
        self.state.tokens().retain(|_, t| t.gateway != gateway);
    }

    /// Registers a Payments API authentication token (of merchant 0).
    pub fn register_authentication_token(&self, token: &str) {
        let _ = self.register_authentication_token_for(0, token);
    }

    /// Registers a Payments API authentication token of merchant `index` (one registered
    /// before, of any merchant, is given to this one). Returns `false`, registering nothing, if
    /// the sandbox does not know merchant `index`.
    pub fn register_authentication_token_for(&self, index: usize, token: &str) -> bool {
        if index >= self.merchants() {
            return false;
        }
        self.state
            .auth_tokens()
            .insert(token.to_owned(), (true, index));
        true
    }

    /// Revokes a Payments API authentication token: it mints nothing more, and every session
    /// token it minted is rejected from now on.
    pub fn revoke_authentication_token(&self, token: &str) {
        if let Some(entry) = self.state.auth_tokens().get_mut(token) {
            entry.0 = false;
        }
        self.state
            .tokens()
            .retain(|_, t| t.parent.as_deref() != Some(token));
    }

    /// What the sandbox saw of `gateway`.
    #[must_use]
    pub fn stats(&self, gateway: Gateway) -> GatewayStats {
        self.state.counters[gateway.index()].read()
    }

    /// What the sandbox saw of `gateway` for merchant `index`: token requests made with its
    /// credentials (requests whose credentials name no merchant count for none), tokens issued
    /// to it, and API requests presenting its tokens (401s for tokens of no merchant count for
    /// none). Zeros for a merchant the sandbox does not know.
    #[must_use]
    pub fn merchant_stats(&self, gateway: Gateway, index: usize) -> GatewayStats {
        self.state.merchant_counters[gateway.index()]
            .get(index)
            .map(Counters::read)
            .unwrap_or_default()
    }
}

impl Counters {
    fn read(&self) -> GatewayStats {
        GatewayStats {
            token_requests: self.token_requests.load(Relaxed),
            tokens_issued: self.tokens_issued.load(Relaxed),
            api_requests: self.api_requests.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
        }
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    respond(status, value.to_string())
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = respond(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_token"}"#);
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(r#"Bearer realm="sandbox", error="invalid_token""#),
    );
    r
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
}

/// A JWT-shaped token with an `exp` claim (unsigned: the sandbox trusts itself).
fn jwt(exp: SystemTime, id: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(json!({"exp": exp, "jti": id, "sub": "sandbox"}).to_string()),
        b64.encode(fastrand::u64(..).to_le_bytes())
    )
}

impl State {
    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn auth_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, usize)>> {
        self.authentication_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn fault(&self, gateway: Gateway) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = faults.get_mut(&gateway)?;
        (!queue.is_empty()).then(|| queue.remove(0))
    }

    /// Issues a token for `gateway`, valid for the configured lifetime (whole seconds for JWTs,
    /// which carry seconds).
    fn issue(
        &self,
        gateway: Gateway,
        merchant: usize,
        parent: Option<&str>,
    ) -> (String, SystemTime) {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let lifetime = Duration::from_millis(self.lifetime_ms.load(Relaxed));
        let mut expires = SystemTime::now() + lifetime;
        let value = match gateway {
            Gateway::Boipa => format!(
                "{:08x}-{id:04}-4000-8000-{:012x}",
                fastrand::u32(..),
                fastrand::u64(..) >> 16
            ),
            Gateway::Torus => format!("torus-{id}-{:016x}", fastrand::u64(..)),
            Gateway::Sipay | Gateway::Payments => {
                let secs = expires
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                expires = UNIX_EPOCH + Duration::from_secs(secs);
                let token = jwt(expires, id);
                if gateway == Gateway::Payments {
                    format!("sandbox_{token}")
                } else {
                    token
                }
            }
        };
        self.tokens().insert(
            value.clone(),
            Issued {
                gateway,
                expires,
                single_use: gateway == Gateway::Boipa,
                used: false,
                parent: parent.map(str::to_owned),
                merchant,
            },
        );
        self.counters[gateway.index()]
            .tokens_issued
            .fetch_add(1, Relaxed);
        self.merchant_counters[gateway.index()][merchant]
            .tokens_issued
            .fetch_add(1, Relaxed);
        (value, expires)
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, 1024 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    r#"{"error":"body too large"}"#,
                );
            }
        };
        let path = parts.uri.path();
        let Some((gateway, rest)) = Gateway::ALL.into_iter().find_map(|g| {
            path.strip_prefix('/')?
                .strip_prefix(g.prefix())
                .map(|rest| (g, rest))
        }) else {
            return respond(StatusCode::NOT_FOUND, r#"{"error":"no such gateway"}"#);
        };
        let issuer_path = match gateway {
            Gateway::Boipa => "/token",
            Gateway::Torus => "/api/v1/session/generate",
            Gateway::Sipay => "/api/token",
            Gateway::Payments => "/session_token",
        };
        if rest != issuer_path {
            return if rest.starts_with("/api/") {
                self.api(gateway, &parts.headers)
            } else {
                respond(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#)
            };
        }
        if parts.method != Method::POST {
            return respond(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":"use POST"}"#);
        }
        self.counters[gateway.index()]
            .token_requests
            .fetch_add(1, Relaxed);
        let merchant = self.identify(gateway, &parts.headers, &body);
        if let Some(m) = merchant {
            self.merchant_counters[gateway.index()][m]
                .token_requests
                .fetch_add(1, Relaxed);
        }
        match self.fault(gateway) {
            Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
            Some(Fault::ServerError) => {
                return respond(StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable");
            }
            Some(Fault::Malformed) => {
                return respond(StatusCode::OK, "<html><body>maintenance</body></html>");
            }
            Some(Fault::RejectCredentials) => return self.refuse(gateway),
            None => {}
        }
        match gateway {
            Gateway::Boipa => self.boipa(merchant, &body),
            Gateway::Torus => self.torus(merchant, &parts.headers, &body),
            Gateway::Sipay => self.sipay(merchant, &body),
            Gateway::Payments => self.payments(&parts.headers),
        }
    }

    /// The merchant a token request's identifying credential names (its secrets unchecked).
    fn identify(&self, gateway: Gateway, headers: &HeaderMap, body: &[u8]) -> Option<usize> {
        let directory = &self.directory;
        match gateway {
            Gateway::Boipa => form_urlencoded::parse(body)
                .find(|(k, _)| k == "merchantId")
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .and_then(|id| directory.boipa.get(&id).copied()),
            Gateway::Torus => {
                let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                credentials["API_KEY"]
                    .as_str()
                    .and_then(|key| directory.torus.get(key).copied())
            }
            Gateway::Sipay => {
                let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                credentials["app_id"]
                    .as_str()
                    .and_then(|id| directory.sipay.get(id).copied())
            }
            Gateway::Payments => {
                bearer(headers).and_then(|token| self.auth_tokens().get(token).map(|e| e.1))
            }
        }
    }

    fn refuse(&self, gateway: Gateway) -> Response<Full<Bytes>> {
        match gateway {
            Gateway::Boipa => json_response(
                StatusCode::OK,
                &json!({"result": "failure", "resultId": format!("{:x}", fastrand::u64(..)), "additionalDetails": {},
                        "errors": [{"messageCode": "Invalid merchant credentials", "fieldName": "password"}], "processingTime": 3}),
            ),
            Gateway::Torus | Gateway::Payments => {
                respond(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#)
            }
            Gateway::Sipay => json_response(
                StatusCode::OK,
                &json!({"status_code": 2, "status_description": "Invalid credentials"}),
            ),
        }
    }

    fn boipa(&self, merchant: Option<usize>, body: &[u8]) -> Response<Full<Bytes>> {
        let fields: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let mut errors = Vec::new();
        for required in [
            "merchantId",
            "password",
            "action",
            "timestamp",
            "allowOriginUrl",
        ] {
            if fields.get(required).is_none_or(|v| v.is_empty()) {
                errors.push(json!({"messageCode": "This field is required in [REQUEST]", "fieldName": required}));
            }
        }
        let now_ms = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX);
        // A timestamp from the request is anything a client sent: out of `i64` it is not
        // current, and the distance to now cannot overflow (`abs_diff` is unsigned).
        if let Some(ts) = fields.get("timestamp")
            && ts
                .parse::<i64>()
                .map_or(true, |t| now_ms.abs_diff(t) > 300_000)
        {
            errors
                .push(json!({"messageCode": "Timestamp is not current", "fieldName": "timestamp"}));
        }
        if !matches!(
            fields.get("action").map(String::as_str),
            Some("TOKENIZE" | "AUTH" | "PURCHASE" | "VERIFY") | None
        ) {
            errors.push(json!({"messageCode": "Invalid value", "fieldName": "action"}));
        }
        let known = merchant.map(|m| &self.directory.merchants[m]);
        let good = known.filter(|m| {
            fields.get("password").map(String::as_str) == Some(m.boipa_password.as_str())
        });
        if errors.is_empty() && good.is_none() {
            return self.refuse(Gateway::Boipa);
        }
        let result_id = format!("{:x}", fastrand::u64(..));
        if !errors.is_empty() {
            return json_response(
                StatusCode::OK,
                &json!({"result": "failure", "resultId": result_id, "additionalDetails": {}, "errors": errors, "processingTime": 2}),
            );
        }
        let Some(merchant) = good else {
            return self.refuse(Gateway::Boipa);
        };
        let (token, _) = self.issue(Gateway::Boipa, merchant.index, None);
        json_response(
            StatusCode::OK,
            &json!({"result": "success", "resultId": result_id, "merchantId": merchant.boipa_merchant_id.to_string(),
                    "additionalDetails": {}, "processingTime": 4, "token": token}),
        )
    }

    fn torus(
        &self,
        merchant: Option<usize>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let good = merchant.map(|m| &self.directory.merchants[m]).filter(|m| {
            header(headers, "token") == Some(m.torus_request_token.as_str())
                && credentials["API_SECRET"] == m.torus_api_secret.as_str()
        });
        let Some(merchant) = good else {
            return self.refuse(Gateway::Torus);
        };
        let (token, _) = self.issue(Gateway::Torus, merchant.index, None);
        json_response(StatusCode::OK, &json!({"AccessToken": token}))
    }

    fn sipay(&self, merchant: Option<usize>, body: &[u8]) -> Response<Full<Bytes>> {
        let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let good = merchant
            .map(|m| &self.directory.merchants[m])
            .filter(|m| credentials["app_secret"] == m.sipay_app_secret.as_str());
        let Some(merchant) = good else {
            return self.refuse(Gateway::Sipay);
        };
        let (token, expires) = self.issue(Gateway::Sipay, merchant.index, None);
        // `expires_at` in the gateway's local time (UTC+3), as the real one does
        let local = expires
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + 3 * 3600;
        json_response(
            StatusCode::OK,
            &json!({"status_code": 100, "status_description": "Successfully Generated token",
                    "data": {"token": token, "is_3d": 1, "expires_at": civil(local)}}),
        )
    }

    fn payments(&self, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let authentication = bearer(headers).map(str::to_owned);
        let merchant = authentication
            .as_deref()
            .and_then(|t| self.auth_tokens().get(t).copied())
            .and_then(|(active, m)| active.then_some(m))
            .filter(|&m| {
                header(headers, "merchant-account")
                    == Some(self.directory.merchants[m].payments_merchant.as_str())
            });
        let Some(merchant) = merchant else {
            return self.refuse(Gateway::Payments);
        };
        let (token, _) = self.issue(Gateway::Payments, merchant, authentication.as_deref());
        json_response(StatusCode::OK, &json!({"token": token}))
    }

    fn api(&self, gateway: Gateway, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let counters = &self.counters[gateway.index()];
        counters.api_requests.fetch_add(1, Relaxed);
        let presented = match gateway {
            Gateway::Boipa | Gateway::Torus => header(headers, "token"),
            Gateway::Sipay | Gateway::Payments => bearer(headers),
        };
        // (whose token it is, whether it is accepted)
        let verdict = presented.and_then(|token| {
            let mut tokens = self.tokens();
            let t = tokens.get_mut(token).filter(|t| t.gateway == gateway)?;
            let merchant = &self.directory.merchants[t.merchant];
            let valid = SystemTime::now() < t.expires
                && !(t.single_use && t.used)
                && (gateway != Gateway::Payments
                    || header(headers, "merchant-account")
                        == Some(merchant.payments_merchant.as_str()));
            if valid {
                t.used = true;
            }
            Some((t.merchant, valid))
        });
        let mine = verdict.map(|(m, _)| &self.merchant_counters[gateway.index()][m]);
        if let Some(c) = mine {
            c.api_requests.fetch_add(1, Relaxed);
        }
        if let Some((merchant, true)) = verdict {
            json_response(
                StatusCode::OK,
                &json!({"ok": true, "gateway": gateway.to_string(), "merchant": merchant}),
            )
        } else {
            counters.unauthorized.fetch_add(1, Relaxed);
            if let Some(c) = mine {
                c.unauthorized.fetch_add(1, Relaxed);
            }
            unauthorized()
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time (H. Hinnant's `civil_from_days`).
fn civil(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), "1970-01-01 00:00:00");
        assert_eq!(civil(1_611_927_961 + 3 * 3600), "2021-01-29 16:46:01");
        assert_eq!(civil(951_868_800), "2000-03-01 00:00:00");
    }
}
