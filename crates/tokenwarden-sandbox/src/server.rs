//! The sandbox server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
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

    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Gateway::Boipa => "boipa",
            Gateway::Torus => "torus",
            Gateway::Sipay => "sipay",
            Gateway::Payments => "payments",
        }
    }

    pub(crate) fn index(self) -> usize {
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
pub(crate) struct Counters {
    pub(crate) token_requests: AtomicU64,
    pub(crate) tokens_issued: AtomicU64,
    pub(crate) api_requests: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
}

pub(crate) struct Issued {
    pub(crate) gateway: Gateway,
    pub(crate) expires: SystemTime,
    pub(crate) single_use: bool,
    pub(crate) used: bool,
    /// For Payments session tokens: the authentication token that minted it.
    pub(crate) parent: Option<String>,
    /// The merchant it was issued to.
    pub(crate) merchant: usize,
}

/// Who is who: each gateway's identifying credential → the merchant.
pub(crate) struct Directory {
    pub(crate) merchants: Vec<Merchant>,
    pub(crate) boipa: HashMap<u64, usize>,
    pub(crate) torus: HashMap<String, usize>,
    pub(crate) sipay: HashMap<String, usize>,
}

impl Directory {
    pub(crate) fn new(count: usize) -> Self {
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

pub(crate) struct State {
    pub(crate) lifetime_ms: AtomicU64,
    pub(crate) next: AtomicU64,
    pub(crate) tokens: Mutex<HashMap<String, Issued>>,
    pub(crate) faults: Mutex<HashMap<Gateway, Vec<Fault>>>,
    /// Payments API authentication tokens → (active, the merchant they belong to).
    pub(crate) authentication_tokens: Mutex<HashMap<String, (bool, usize)>>,
    pub(crate) directory: Directory,
    pub(crate) counters: [Counters; 4],
    /// Per gateway, per merchant.
    pub(crate) merchant_counters: [Vec<Counters>; 4],
    /// The payment-grade OAuth 2.0 mode.
    pub(crate) oauth2: crate::fapi::OAuth2,
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
            oauth2: crate::fapi::OAuth2::new(format!("http://{addr}")),
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

/// The payment-grade OAuth 2.0 mode: `private_key_jwt` clients (RFC 7523) get DPoP-bound
/// tokens (RFC 9449) for the API at [`oauth2_api_url`](Sandbox::oauth2_api_url).
impl Sandbox {
    /// Registers client `client_id` with the public key of its assertions, a JWK (EC P-256,
    /// OKP Ed25519 or RSA; e.g. `SigningKey::public_jwk`). Registering again replaces the key.
    pub fn register_client(&self, client_id: &str, public_jwk: serde_json::Value) {
        self.state.oauth2.register(client_id, public_jwk);
    }

    /// The token endpoint, `http://127.0.0.1:<port>/oauth2/token`.
    #[must_use]
    pub fn oauth2_token_url(&self) -> String {
        self.state.oauth2.token_url()
    }

    /// A URL of the DPoP-protected API, e.g. `…/oauth2/api/payments` for `"payments"`.
    #[must_use]
    pub fn oauth2_api_url(&self, path: &str) -> String {
        format!(
            "{}{}{}",
            self.url(),
            crate::fapi::API_PREFIX,
            path.trim_start_matches('/')
        )
    }

    /// Replaces the DPoP nonce: proofs with the one before are answered `use_dpop_nonce`.
    pub fn rotate_dpop_nonce(&self) {
        self.state.oauth2.rotate_nonce();
    }

    /// What the sandbox saw of its OAuth 2.0 mode.
    #[must_use]
    pub fn oauth2_stats(&self) -> crate::OAuth2Stats {
        self.state.oauth2.stats()
    }
}

impl Counters {
    pub(crate) fn read(&self) -> GatewayStats {
        GatewayStats {
            token_requests: self.token_requests.load(Relaxed),
            tokens_issued: self.tokens_issued.load(Relaxed),
            api_requests: self.api_requests.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
        }
    }
}
