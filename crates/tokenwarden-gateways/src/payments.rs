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
//! - [`SessionTokens`] keeps one cache per authentication token; revoking an authentication
//!   token expires every session token minted under it, and none is used or minted afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, StatusCode};
use tokenwarden_core::{
    ConfigError, Expiry, FetchError, Presentation, Secret, Token, TokenCache, TokenCacheBuilder,
    TokenSource,
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
    revoked: Arc<AtomicBool>,
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
            issuer: Issuer::new(sender, GATEWAY, base_url, "/session_token", "base_url")?,
            headers: [
                (AUTHORIZATION, authorization),
                (merchant_account(), header_value(merchant, "merchant")?),
            ],
            revoked: Arc::default(),
        })
    }
}

#[async_trait]
impl TokenSource for SessionTokenSource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        if self.revoked.load(Ordering::Acquire) {
            return Err(FetchError::rejected(revoked()));
        }
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
        let mut value = header_value(value.expose(), "header")?;
        value.set_sensitive(true);
        self.headers.push((name, value));
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

/// One session-token cache per authentication token, on a merchant server.
///
/// [`mint`](Self::mint) hands a fresh session token to a client app (never the same one
/// twice); [`cache`](Self::cache) is a shared cache for code on this server that calls the API
/// with session tokens itself. [`revoke`](Self::revoke) expires every session token minted
/// under an authentication token: both caches drop theirs, a fetch under way cannot install
/// one, and nothing is minted with it again.
#[derive(Clone)]
pub struct SessionTokens {
    sender: Arc<dyn HttpSend>,
    base_url: UrlText,
    merchant: String,
    presentation: Presentation,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    configure: Arc<dyn Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync>,
}

#[derive(Clone)]
struct Entry {
    shared: TokenCache,
    single: TokenCache,
    revoked: Arc<AtomicBool>,
}

impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("SessionTokens")
            .field("base_url", &self.base_url)
            .field("merchant", &self.merchant)
            .field("authentication_tokens", &keys)
            .finish_non_exhaustive()
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
        Ok(Self {
            sender: Arc::new(sender),
            base_url: UrlText(base_url.into()),
            presentation: presentation(&merchant)?,
            merchant,
            entries: Arc::default(),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an authentication token under `key` (a name for its use case), replacing any
    /// earlier one under that key.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an invalid base URL or token.
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
        let revoked = Arc::clone(&source.revoked);
        let build = |single: bool| {
            let builder = (self.configure)(
                TokenCache::builder(source.clone())
                    .with_name(format!("{GATEWAY} ({key})"))
                    .with_presentation(self.presentation.clone())
                    .with_default_lifetime(DEFAULT_SESSION_LIFETIME),
            );
            if single {
                builder.single_use()
            } else {
                builder
            }
            .build()
        };
        let entry = Entry {
            shared: build(false)?,
            single: build(true)?,
            revoked,
        };
        if let Some(old) = self.lock().insert(key, entry) {
            revoke_entry(&old);
        }
        Ok(())
    }

    /// The shared cache of session tokens minted with the authentication token `key`.
    #[must_use]
    pub fn cache(&self, key: &str) -> Option<TokenCache> {
        self.lock().get(key).map(|e| e.shared.clone())
    }

    /// A fresh session token for a client app, minted with the authentication token `key`.
    ///
    /// # Errors
    ///
    /// [`tokenwarden_core::Error`] from the fetch; `Rejected` if `key` is unknown or revoked.
    pub async fn mint(&self, key: &str) -> Result<Token, tokenwarden_core::Error> {
        let single = self.lock().get(key).map(|e| e.single.clone());
        match single {
            Some(cache) => Ok(cache.get().await?.token().clone()),
            None => Err(tokenwarden_core::Error::Rejected(FetchError::rejected(
                revoked(),
            ))),
        }
    }

    /// Revokes the authentication token `key` here: every session token minted under it is
    /// dropped, fetches under way are discarded, and nothing is minted with it again.
    /// Returns whether `key` was registered. (Revoke it at the Payments API too.)
    pub fn revoke(&self, key: &str) -> bool {
        let entry = self.lock().remove(key);
        entry.as_ref().map(revoke_entry).is_some()
    }
}

fn revoke_entry(entry: &Entry) {
    entry.revoked.store(true, Ordering::Release);
    entry.shared.revoke();
    entry.single.revoke();
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
