//! Torus session (access) tokens.
//!
//! `POST {base}/api/v1/session/generate` with `Content-Type: application/json`, the request
//! token the user already holds in a `Token` header, and `{"API_KEY":…,"API_SECRET":…}`. The
//! answer is `{"AccessToken":"…"}` with no expiry: a configurable lifetime applies (8 hours by
//! default), and a 401 from the API refreshes it earlier. A 401 or 403 from the issuer means
//! the request token was rejected: terminal, not retried in a loop.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tokenwarden_core::{
    ConfigError, FetchError, Presentation, Secret, Token, TokenCache, TokenCacheBuilder,
    TokenSource,
};

use crate::wire::{Answer, Issuer};
use crate::{GatewayCode, GatewayConfig, GatewayError, HttpSend};

const GATEWAY: &str = "Torus";

/// The production base URL.
pub const BASE_URL: &str = "https://connects.torusdigital.com";

/// Torus's credentials, in a [`TorusConfig`].
#[derive(Clone, Debug)]
pub struct Credentials {
    request_token: Secret,
    api_key: Secret,
    api_secret: Secret,
}

/// Credentials and settings ([`GatewayConfig`] has the settings every gateway shares).
pub type TorusConfig = GatewayConfig<Credentials>;

impl TorusConfig {
    /// Credentials for `base_url` (e.g. [`BASE_URL`]). Tokens are used for 8 hours (the issuer
    /// states no expiry): see [`with_token_lifetime`](GatewayConfig::with_token_lifetime).
    pub fn new(
        base_url: impl Into<String>,
        request_token: impl Into<Secret>,
        api_key: impl Into<Secret>,
        api_secret: impl Into<Secret>,
    ) -> Self {
        GatewayConfig::of(
            base_url,
            Duration::from_secs(8 * 3600),
            Credentials {
                request_token: request_token.into(),
                api_key: api_key.into(),
                api_secret: api_secret.into(),
            },
        )
    }
}

/// Fetches Torus access tokens.
#[derive(Clone, Debug)]
pub struct TorusSource {
    issuer: Issuer,
    config: TorusConfig,
    /// `Token: <request token>`, built once, marked sensitive.
    headers: [(HeaderName, HeaderValue); 1],
}

impl TorusSource {
    /// A source sending through `sender`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the base URL is not an absolute URL, or the request token cannot be a
    /// header value.
    pub fn new(sender: impl HttpSend, config: TorusConfig) -> Result<Self, ConfigError> {
        let credentials = &config.credentials;
        let mut request_token =
            HeaderValue::from_str(credentials.request_token.expose()).map_err(|_| {
                ConfigError::Invalid {
                    name: "request_token",
                    reason: "must be a valid header value",
                }
            })?;
        request_token.set_sensitive(true);
        let headers = [(HeaderName::from_static("token"), request_token)];
        let issuer = config
            .issuer(sender, GATEWAY, "/api/v1/session/generate")?
            .with_secrets([
                credentials.request_token.expose(),
                credentials.api_key.expose(),
                credentials.api_secret.expose(),
            ]);
        Ok(Self {
            issuer,
            config,
            headers,
        })
    }
}

#[async_trait]
impl TokenSource for TorusSource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched = async {
            let body = serde_json::json!({
                "API_KEY": self.config.credentials.api_key.expose(),
                "API_SECRET": self.config.credentials.api_secret.expose(),
            });
            let (status, body) = self
                .issuer
                .post(
                    Some("application/json"),
                    &self.headers,
                    Bytes::from(body.to_string()),
                )
                .await?;
            Ok(parse(status, &body)?.with_expires_in(self.config.token_lifetime()))
        }
        .await;
        self.issuer.fetched(fetched)
    }
}

/// Reads a token response.
///
/// # Errors
///
/// [`GatewayError`]: a rejected request token (terminal), an error status, or what is malformed.
pub fn parse(status: StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
    if matches!(status.as_u16(), 401 | 403) {
        return Err(GatewayError::Refused {
            gateway: GATEWAY,
            status,
            codes: vec![GatewayCode {
                code: status.as_u16().to_string(),
                message:
                    "the request token was rejected; get a new request token, retrying cannot help"
                        .into(),
            }],
            reference: None,
            retryable: false,
        });
    }
    if !status.is_success() {
        return Err(GatewayError::Status {
            gateway: GATEWAY,
            status,
            retry_after: None,
        });
    }
    let answer = Answer::parse(GATEWAY, status, body)?;
    Ok(Token::new(answer.string("/AccessToken")?))
}

/// The default presentation: `Token: <AccessToken>` (some setups want
/// [`Presentation::bearer`] instead).
#[must_use]
pub fn presentation() -> Presentation {
    Presentation::header(HeaderName::from_static("token"))
}

/// A shared cache of Torus access tokens. An invalid base URL or request token is the
/// [`ConfigError`] its `build()` returns.
pub fn cache(sender: impl HttpSend, config: TorusConfig) -> TokenCacheBuilder {
    let lifetime = config.token_lifetime();
    TokenCache::try_builder(TorusSource::new(sender, config))
        .with_name(GATEWAY)
        .with_presentation(presentation())
        .with_default_lifetime(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_every_credential() {
        let sender = |_: http::Request<Bytes>, _: usize| async {
            Err::<http::Response<Bytes>, _>(tokenwarden_core::BoxError::from("offline"))
        };
        let config = TorusConfig::new(BASE_URL, "request-t0ken", "key-k3y", "s3cret");
        let source = TorusSource::new(sender, config).unwrap();
        let text = format!("{source:?}");
        for secret in ["request-t0ken", "key-k3y", "s3cret"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn reads_the_documented_answers() {
        let token = parse(StatusCode::OK, br#"{"AccessToken":"abc.def"}"#).unwrap();
        assert_eq!(token.secret().expose(), "abc.def");
        // the document shows a trailing comma: not JSON
        let e = parse(StatusCode::OK, b"{\"AccessToken\":\"abc\",}").unwrap_err();
        assert!(matches!(e, GatewayError::Malformed { .. }));
        for body in [
            &b"{}"[..],
            br#"{"AccessToken":""}"#,
            br#"{"AccessToken":7}"#,
            b"null",
        ] {
            assert!(matches!(
                parse(StatusCode::OK, body),
                Err(GatewayError::Malformed { .. })
            ));
        }
        for status in [401, 403] {
            let e = parse(StatusCode::from_u16(status).unwrap(), b"").unwrap_err();
            assert!(!e.is_retryable(), "{e}");
            assert!(e.to_string().contains("request token was rejected"));
        }
        assert!(
            parse(StatusCode::BAD_GATEWAY, b"")
                .unwrap_err()
                .is_retryable()
        );
    }
}
