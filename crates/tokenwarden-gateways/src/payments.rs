//! The Payments API's delegated session tokens.
//!
//! - A **merchant server** holds authentication tokens (long-lived, scoped, up to ~1000) and
//!   mints session tokens with them: `POST {base}/session_token` with `Accept` and
//!   `Content-Type: application/json`, `Authorization: Bearer <authentication token>` and
//!   `Merchant-Account: <FNS number>`, answered `{"token":"sandbox_eyJ…"}`
//!   ([`SessionTokenSource`]).
//! - A **client app** gets session tokens from the merchant server's own endpoint
//!   ([`ClientAppSource`]) and calls the API directly with `Authorization: Bearer <session
//!   token>` and `Merchant-Account` ([`presentation`]); on a 401 it gets a new one and replays
//!   the request — what the layers do.
//! - Session tokens live about 15 minutes: the expiry is the JWT's `exp` after the environment
//!   prefix (`sandbox_`) when readable, else 15 minutes.
//! - [`SessionTokens`] keeps one cache per authentication token (a keyed cache), which can be
//!   rotated and revoked. The delegation flow, end to end:
//!   [docs/gateways.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/gateways.md).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, StatusCode};
use tokenwarden_core::{
    ConfigError, Expiry, FetchError, KeyedCache, Presentation, Secret, Token, TokenCache,
    TokenCacheBuilder, TokenSource,
};

use crate::wire::{Answer, Issuer, UrlText, jwt_expiry};
use crate::{GatewayCode, GatewayError, HttpSend};

const GATEWAY: &str = "Payments API";

/// The lifetime assumed for a session token whose expiry cannot be read.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

fn merchant_account() -> HeaderName {
    HeaderName::from_static("merchant-account")
}

fn header_value(value: &str, setting: &'static str) -> Result<HeaderValue, ConfigError> {
    HeaderValue::from_str(value).map_err(|_| ConfigError::Invalid {
        name: setting,
        reason: "must be a valid header value",
    })
}

/// How client apps present a session token: `Authorization: Bearer <session token>` and
/// `Merchant-Account: <merchant identifier>`.
///
/// # Errors
///
/// [`ConfigError`] if the merchant identifier cannot be a header value.
pub fn presentation(merchant: &str) -> Result<Presentation, ConfigError> {
    Ok(Presentation::bearer()
        .with_fixed_header(merchant_account(), header_value(merchant, "merchant")?))
}

/// Reads a session-token response (`{"token":"sandbox_eyJ…"}`), from the API or from a
/// merchant server that passes it on.
///
/// # Errors
///
/// [`GatewayError`]: an error status (401/403: the authentication token was rejected) or what
/// is malformed.
pub fn parse(status: StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
    if !status.is_success() {
        return Err(GatewayError::Status {
            gateway: GATEWAY,
            status,
            retry_after: None,
        });
    }
    let answer = Answer::parse(GATEWAY, status, body)?;
    let secret = answer.string("/token")?;
    Ok(Token::new(secret).with_expiry(session_expiry(secret)))
}

/// The expiry of a session token: the `exp` of the JWT after an environment prefix such as
/// `sandbox_`, else [`DEFAULT_SESSION_LIFETIME`].
#[must_use]
pub fn session_expiry(token: &str) -> Expiry {
    let jwt = match token.find("eyJ") {
        Some(start) if token[..start].ends_with('_') || start == 0 => &token[start..],
        _ => token,
    };
    jwt_expiry(jwt).map_or(Expiry::In(DEFAULT_SESSION_LIFETIME), Expiry::At)
}

/// Mints session tokens on a merchant server with one authentication token.
#[derive(Clone, Debug)]
pub struct SessionTokenSource {
    issuer: Issuer,
    /// `Authorization: Bearer <authentication token>` (sensitive) and `Merchant-Account`.
    headers: [(HeaderName, HeaderValue); 2],
}

impl SessionTokenSource {
    /// A source minting with `authentication_token` for the merchant `merchant` (its FNS
    /// number) against `base_url`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid base URL, token or merchant identifier.
    pub fn new(
        sender: impl HttpSend,
        base_url: &str,
        authentication_token: &Secret,
        merchant: &str,
    ) -> Result<Self, ConfigError> {
        Self::shared(Arc::new(sender), base_url, authentication_token, merchant)
    }

    fn shared(
        sender: Arc<dyn HttpSend>,
        base_url: &str,
        authentication_token: &Secret,
        merchant: &str,
    ) -> Result<Self, ConfigError> {
        let mut authorization = header_value(
            &format!("Bearer {}", authentication_token.expose()),
            "authentication_token",
        )?;
        authorization.set_sensitive(true);
        Ok(Self {
            issuer: Issuer::new(sender, GATEWAY, base_url, "/session_token", "base_url")?
                .with_secrets([authentication_token.expose()]),
            headers: [
                (AUTHORIZATION, authorization),
                (merchant_account(), header_value(merchant, "merchant")?),
            ],
        })
    }
}

#[async_trait]
impl TokenSource for SessionTokenSource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched = async {
            let body = Bytes::from_static(b"{}");
            let (status, body) = self
                .issuer
                .post(Some("application/json"), &self.headers, body)
                .await?;
            parse(status, &body)
        }
        .await;
        self.issuer.fetched(fetched)
    }
}

fn revoked() -> GatewayError {
    GatewayError::Refused {
        gateway: GATEWAY,
        status: StatusCode::UNAUTHORIZED,
        codes: vec![GatewayCode {
            code: "revoked".into(),
            message: "the authentication token was revoked; no session token is minted with it"
                .into(),
        }],
        reference: None,
        retryable: false,
    }
}

/// Gets session tokens for a client app from the merchant server's own endpoint, which answers
/// like the API (`{"token":"…"}`).
#[derive(Clone, Debug)]
pub struct ClientAppSource {
    issuer: Issuer,
    /// The client app's own credentials with its merchant server (sensitive).
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ClientAppSource {
    /// A source asking `endpoint` (the merchant server's session-token URL).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the endpoint is not an absolute URL.
    pub fn new(sender: impl HttpSend, endpoint_url: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            issuer: Issuer::new(Arc::new(sender), GATEWAY, endpoint_url, "", "endpoint")?,
            headers: Vec::new(),
        })
    }

    /// A header the merchant server authenticates the client app with (its own credential,
    /// marked sensitive).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the value cannot be a header value.
    pub fn with_header(mut self, name: HeaderName, value: &Secret) -> Result<Self, ConfigError> {
        let mut header = header_value(value.expose(), "header")?;
        header.set_sensitive(true);
        self.headers.push((name, header));
        self.issuer = self.issuer.with_secrets([value.expose()]);
        Ok(self)
    }
}

#[async_trait]
impl TokenSource for ClientAppSource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched = async {
            let (status, body) = self.issuer.post(None, &self.headers, Bytes::new()).await?;
            parse(status, &body)
        }
        .await;
        self.issuer.fetched(fetched)
    }
}

/// One session-token cache per authentication token, on a merchant server: two
/// [`KeyedCache`]s (a shared one and a single-use one) keyed by a name you give each
/// authentication token.
///
/// [`mint`](Self::mint) hands a fresh session token to a client app (never the same one
/// twice); [`cache`](Self::cache) is a shared cache for code on this server that calls the API
/// with session tokens itself, and [`keyed`](Self::keyed) the keyed cache behind it, for a layer
/// that picks the authentication token per request (`TokenMiddleware::keyed`).
///
/// - **Rotation**: [`register`](Self::register) under a name already there swaps the
///   authentication token in place. Caches and layers built earlier keep working, and no
///   request fails: the session token minted under the old authentication token stays valid at
///   the API and is served until it is due for refresh (see [`TokenCache::rotate`]); the next
///   one is minted with the new authentication token. For an authentication token that leaked,
///   [`revoke`](Self::revoke) the name first.
/// - **Revocation**: [`revoke`](Self::revoke) expires every session token minted under an
///   authentication token: both caches drop theirs, a fetch under way cannot install one,
///   nothing is minted with it again (caches built earlier fail with `Rejected`, saying it was
///   revoked), and the name is free for a new registration.
/// - A name never registered (or revoked) is [`Error::UnknownKey`](tokenwarden_core::Error::UnknownKey),
///   never another authentication token's session.
/// - Names are labels, not secrets: they appear in errors, logs, tracing spans and
///   [`KeyedCache::summary`]. Never use the authentication token itself as its name.
///
/// ```
/// use tokenwarden_core::Secret;
/// use tokenwarden_gateways::IssuerClient;
/// use tokenwarden_gateways::payments::SessionTokens;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sessions = SessionTokens::new(IssuerClient::new()?, "https://api.example.com", "FNS-1")?;
/// sessions.register("checkout", &Secret::new("the checkout authentication token"))?;
/// let checkout = sessions.cache("checkout").expect("registered");
/// # drop(checkout);
/// // later: a new authentication token for checkout; `checkout` keeps working.
/// sessions.register("checkout", &Secret::new("its successor"))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SessionTokens {
    sender: Arc<dyn HttpSend>,
    base_url: UrlText,
    merchant: String,
    presentation: Presentation,
    shared: KeyedCache<String>,
    single: KeyedCache<String>,
    /// Registrations and revocations one at a time, so that a name is always in both keyed
    /// caches with the same authentication token, or in neither.
    changes: Arc<Mutex<()>>,
    configure: Arc<dyn Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync>,
}

impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTokens")
            .field("base_url", &self.base_url)
            .field("merchant", &self.merchant)
            .field("authentication_tokens", &self.shared.len())
            .finish_non_exhaustive()
    }
}

/// Where a revoked authentication token's caches fetch from: nowhere.
struct Revoked;

#[async_trait]
impl TokenSource for Revoked {
    async fn fetch(&self) -> Result<Token, FetchError> {
        Err(FetchError::rejected(revoked()))
    }
}

impl SessionTokens {
    /// An empty registry for `merchant` (its FNS number) against `base_url`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid merchant identifier.
    pub fn new(
        sender: impl HttpSend,
        base_url: impl Into<String>,
        merchant: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let merchant = merchant.into();
        // Names are the user's own (not secrets): labels show them. Registered names are kept
        // (there is no factory), so the capacity only sizes the map.
        let keyed = |name: &'static str| {
            KeyedCache::builder()
                .with_name(name)
                .with_key_label(String::clone)
                // `cache(name)` hands out a key's own cache, for layers built on it.
                .with_copies_per_key()
                .build()
        };
        Ok(Self {
            sender: Arc::new(sender),
            base_url: UrlText(base_url.into()),
            presentation: presentation(&merchant)?,
            merchant,
            shared: keyed(GATEWAY),
            single: keyed("Payments API (single use)"),
            changes: Arc::default(),
            configure: Arc::new(|builder| builder),
        })
    }

    /// Adjusts the settings of the caches made for authentication tokens registered from now on
    /// (timeouts, clock-skew margin, …).
    #[must_use]
    pub fn with_cache_settings(
        mut self,
        configure: impl Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    /// Registers an authentication token under `key` (a name for its use case). If `key` is
    /// there already, its authentication token is replaced in place (see the type's docs).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid base URL or token, or settings that cannot work.
    pub fn register(
        &self,
        key: impl Into<String>,
        authentication_token: &Secret,
    ) -> Result<(), ConfigError> {
        let key = key.into();
        let source = SessionTokenSource::shared(
            Arc::clone(&self.sender),
            &self.base_url.0,
            authentication_token,
            &self.merchant,
        )?;
        let builder = |single: bool| {
            let builder = (self.configure)(
                TokenCache::builder(source.clone())
                    .with_presentation(self.presentation.clone())
                    .with_default_lifetime(DEFAULT_SESSION_LIFETIME),
            );
            if single {
                builder.single_use()
            } else {
                builder
            }
        };
        let _one_at_a_time = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        for (keyed, single) in [(&self.shared, false), (&self.single, true)] {
            if !keyed.rotate(&key, source.clone()) {
                keyed
                    .register(key.clone(), builder(single))
                    .map_err(config_error)?;
            }
        }
        Ok(())
    }

    /// The shared cache of session tokens minted with the authentication token `key`.
    #[must_use]
    pub fn cache(&self, key: &str) -> Option<TokenCache> {
        self.shared
            .handle(&key.to_owned())
            .ok()
            .map(|handle| handle.cache().clone())
    }

    /// The keyed cache behind [`cache`](Self::cache), keyed by the names given to
    /// [`register`](Self::register): for a layer that chooses the authentication token per
    /// request, and for [`KeyedCache::summary`] on a health endpoint.
    #[must_use]
    pub fn keyed(&self) -> &KeyedCache<String> {
        &self.shared
    }

    /// A fresh session token for a client app, minted with the authentication token `key`.
    ///
    /// # Errors
    ///
    /// [`tokenwarden_core::Error::UnknownKey`] if `key` is not registered (or was revoked);
    /// otherwise the fetch's error.
    pub async fn mint(&self, key: &str) -> Result<Token, tokenwarden_core::Error> {
        let handle = self.single.handle(&key.to_owned())?;
        Ok(handle.cache().get().await?.token().clone())
    }

    /// Revokes the authentication token `key` here: every session token minted under it is
    /// dropped, fetches under way are discarded, and nothing is minted with it again — caches
    /// handed out earlier fail with `Rejected`. Returns whether `key` was registered. (Revoke it
    /// at the Payments API too.)
    pub fn revoke(&self, key: &str) -> bool {
        let key = key.to_owned();
        let mut found = false;
        let _one_at_a_time = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        for keyed in [&self.shared, &self.single] {
            // Fetches from now on are refused, then the tokens and fetches under way go.
            if keyed.rotate(&key, Revoked) {
                keyed.revoke(&key);
                keyed.remove(&key);
                found = true;
            }
        }
        found
    }
}

fn config_error(error: tokenwarden_core::Error) -> ConfigError {
    match error {
        tokenwarden_core::Error::KeyConfig { source, .. } => source,
        _ => ConfigError::Invalid {
            name: "authentication_token",
            reason: "could not be registered",
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn session_tokens_expire_by_their_jwt_or_in_15_minutes() {
        // sandbox_ + a JWT whose payload is {"exp":1900000000}
        let token = "sandbox_eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE5MDAwMDAwMDB9.sig";
        let parsed = parse(
            StatusCode::OK,
            format!(r#"{{"token":"{token}"}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(parsed.secret().expose(), token);
        let Expiry::At(at) = parsed.expiry() else {
            panic!()
        };
        assert_eq!(
            at.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_900_000_000
        );
        let opaque = parse(
            StatusCode::OK,
            br#"{"token":"sandbox_eyJhbGciOiJIUzI1NiI..."}"#,
        )
        .unwrap();
        assert_eq!(opaque.expiry(), Expiry::In(DEFAULT_SESSION_LIFETIME));
    }

    #[test]
    fn failures_are_typed() {
        assert!(
            !parse(StatusCode::UNAUTHORIZED, b"")
                .unwrap_err()
                .is_retryable()
        );
        assert!(
            parse(StatusCode::INTERNAL_SERVER_ERROR, b"")
                .unwrap_err()
                .is_retryable()
        );
        for body in [
            &b"{\"token\":\"\"}"[..],
            b"{\"token\":null}",
            b"{\"tok\":\"x\"}",
            b"[]",
            b"<html>",
        ] {
            assert!(matches!(
                parse(StatusCode::OK, body),
                Err(GatewayError::Malformed { .. })
            ));
        }
    }
}
