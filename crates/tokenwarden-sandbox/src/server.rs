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
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(60),
        }
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
}

struct State {
    lifetime_ms: AtomicU64,
    next: AtomicU64,
    tokens: Mutex<HashMap<String, Issued>>,
    faults: Mutex<HashMap<Gateway, Vec<Fault>>>,
    authentication_tokens: Mutex<HashMap<String, bool>>,
    counters: [Counters; 4],
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
        let state = Arc::new(State {
            lifetime_ms: AtomicU64::new(config.token_lifetime.as_millis() as u64),
            next: AtomicU64::new(0),
            tokens: Mutex::default(),
            faults: Mutex::default(),
            authentication_tokens: Mutex::new(HashMap::from([(
                PAYMENTS_AUTHENTICATION_TOKEN.to_owned(),
                true,
            )])),
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
    pub fn scope(&self) -> Result<tokenwarden_core::Scope, tokenwarden_core::ConfigError> {
        tokenwarden_core::Scope::origin(&self.url())
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

    /// A BOIPA configuration with the sandbox's credentials.
    #[must_use]
    pub fn boipa_config(&self) -> BoipaConfig {
        BoipaConfig::new(
            self.base_url(Gateway::Boipa),
            BOIPA_MERCHANT_ID,
            BOIPA_PASSWORD,
            "https://shop.example",
        )
    }

    /// A Torus configuration with the sandbox's credentials.
    #[must_use]
    pub fn torus_config(&self) -> TorusConfig {
        TorusConfig::new(
            self.base_url(Gateway::Torus),
            TORUS_REQUEST_TOKEN,
            TORUS_API_KEY,
            TORUS_API_SECRET,
        )
    }

    /// A Sipay configuration with the sandbox's credentials.
    #[must_use]
    pub fn sipay_config(&self) -> SipayConfig {
        SipayConfig::new(
            self.base_url(Gateway::Sipay),
            SIPAY_APP_ID,
            SIPAY_APP_SECRET,
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

    /// Registers a Payments API authentication token.
    pub fn register_authentication_token(&self, token: &str) {
        self.state.auth_tokens().insert(token.to_owned(), true);
    }

    /// Revokes a Payments API authentication token: it mints nothing more, and every session
    /// token it minted is rejected from now on.
    pub fn revoke_authentication_token(&self, token: &str) {
        self.state.auth_tokens().insert(token.to_owned(), false);
        self.state
            .tokens()
            .retain(|_, t| t.parent.as_deref() != Some(token));
    }

    /// What the sandbox saw of `gateway`.
    #[must_use]
    pub fn stats(&self, gateway: Gateway) -> GatewayStats {
        let c = &self.state.counters[gateway.index()];
        GatewayStats {
            token_requests: c.token_requests.load(Relaxed),
            tokens_issued: c.tokens_issued.load(Relaxed),
            api_requests: c.api_requests.load(Relaxed),
            unauthorized: c.unauthorized.load(Relaxed),
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

    fn auth_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
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
    fn issue(&self, gateway: Gateway, parent: Option<&str>) -> (String, SystemTime) {
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
            },
        );
        self.counters[gateway.index()]
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
            Gateway::Boipa => self.boipa(&body),
            Gateway::Torus => self.torus(&parts.headers, &body),
            Gateway::Sipay => self.sipay(&body),
            Gateway::Payments => self.payments(&parts.headers),
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

    fn boipa(&self, body: &[u8]) -> Response<Full<Bytes>> {
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
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i128;
        if let Some(ts) = fields.get("timestamp")
            && ts
                .parse::<i128>()
                .map_or(true, |t| (now_ms - t).abs() > 300_000)
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
        let good = fields.get("merchantId").map(String::as_str)
            == Some(&BOIPA_MERCHANT_ID.to_string())
            && fields.get("password").map(String::as_str) == Some(BOIPA_PASSWORD);
        if errors.is_empty() && !good {
            return self.refuse(Gateway::Boipa);
        }
        let result_id = format!("{:x}", fastrand::u64(..));
        if !errors.is_empty() {
            return json_response(
                StatusCode::OK,
                &json!({"result": "failure", "resultId": result_id, "additionalDetails": {}, "errors": errors, "processingTime": 2}),
            );
        }
        let (token, _) = self.issue(Gateway::Boipa, None);
        json_response(
            StatusCode::OK,
            &json!({"result": "success", "resultId": result_id, "merchantId": BOIPA_MERCHANT_ID.to_string(),
                    "additionalDetails": {}, "processingTime": 4, "token": token}),
        )
    }

    fn torus(&self, headers: &HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let good = header(headers, "token") == Some(TORUS_REQUEST_TOKEN)
            && credentials["API_KEY"] == TORUS_API_KEY
            && credentials["API_SECRET"] == TORUS_API_SECRET;
        if !good {
            return self.refuse(Gateway::Torus);
        }
        let (token, _) = self.issue(Gateway::Torus, None);
        json_response(StatusCode::OK, &json!({"AccessToken": token}))
    }

    fn sipay(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if credentials["app_id"] != SIPAY_APP_ID || credentials["app_secret"] != SIPAY_APP_SECRET {
            return self.refuse(Gateway::Sipay);
        }
        let (token, expires) = self.issue(Gateway::Sipay, None);
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
        let active = authentication
            .as_deref()
            .is_some_and(|t| self.auth_tokens().get(t).copied().unwrap_or(false));
        if !active || header(headers, "merchant-account") != Some(PAYMENTS_MERCHANT) {
            return self.refuse(Gateway::Payments);
        }
        let (token, _) = self.issue(Gateway::Payments, authentication.as_deref());
        json_response(StatusCode::OK, &json!({"token": token}))
    }

    fn api(&self, gateway: Gateway, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let counters = &self.counters[gateway.index()];
        counters.api_requests.fetch_add(1, Relaxed);
        let presented = match gateway {
            Gateway::Boipa | Gateway::Torus => header(headers, "token"),
            Gateway::Sipay => bearer(headers),
            Gateway::Payments => bearer(headers)
                .filter(|_| header(headers, "merchant-account") == Some(PAYMENTS_MERCHANT)),
        };
        let valid = presented.is_some_and(|token| {
            let mut tokens = self.tokens();
            match tokens.get_mut(token) {
                Some(t)
                    if t.gateway == gateway
                        && SystemTime::now() < t.expires
                        && !(t.single_use && t.used) =>
                {
                    t.used = true;
                    true
                }
                _ => false,
            }
        });
        if valid {
            json_response(
                StatusCode::OK,
                &json!({"ok": true, "gateway": gateway.to_string()}),
            )
        } else {
            counters.unauthorized.fetch_add(1, Relaxed);
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
