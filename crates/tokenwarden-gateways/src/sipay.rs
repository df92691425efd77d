//! Sipay tokens.
//!
//! `POST {ACCESS_URL}/api/token` with `{"app_id":…,"app_secret":…}`. Success is
//! `status_code: 100` with `data.token` (a JWT), `data.is_3d` and `data.expires_at`; any other
//! `status_code` is [`GatewayError::Refused`] with the code and `status_description`.
//!
//! Expiry: the JWT's `exp` claim when readable; otherwise `expires_at`, which is the gateway's
//! **local** time with no zone (Turkey, UTC+3 by default, configurable) — read as UTC it would
//! keep a dead token for three extra hours. `is_3d` is exposed as [`ThreeD`] token metadata.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use tokenwarden_core::{
    ConfigError, Expiry, FetchError, Presentation, Secret, Token, TokenCache, TokenCacheBuilder,
    TokenSource,
};

use crate::wire::{Answer, Issuer, jwt_expiry, local_time};
use crate::{GatewayCode, GatewayConfig, GatewayError, HttpSend};

const GATEWAY: &str = "Sipay";

/// The test base URL (`ACCESS_URL`).
pub const TEST_BASE_URL: &str = "https://provisioning.sipay.com.tr/ccpayment";

/// The payment integration options a merchant has (`is_3d`), kept as token metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThreeD {
    /// `0`: white-label 2D only.
    TwoDOnly,
    /// `1`: 2D or 3D; the merchant site must let the user choose.
    Choice,
    /// `2`: 3D only.
    ThreeDOnly,
    /// `4`: branded payment solution.
    Branded,
    /// A value the document does not list.
    Other(i64),
}

impl From<i64> for ThreeD {
    fn from(value: i64) -> Self {
        match value {
            0 => ThreeD::TwoDOnly,
            1 => ThreeD::Choice,
            2 => ThreeD::ThreeDOnly,
            4 => ThreeD::Branded,
            other => ThreeD::Other(other),
        }
    }
}

/// Sipay's credentials and its clock, in a [`SipayConfig`].
#[derive(Clone, Debug)]
pub struct Credentials {
    app_id: String,
    app_secret: Secret,
    utc_offset: i32,
}

/// Credentials and settings ([`GatewayConfig`] has the settings every gateway shares).
pub type SipayConfig = GatewayConfig<Credentials>;

impl SipayConfig {
    /// Credentials for `base_url` (e.g. [`TEST_BASE_URL`]). Tokens carry their expiry; one
    /// that does not is used for an hour.
    pub fn new(
        base_url: impl Into<String>,
        app_id: impl Into<String>,
        app_secret: impl Into<Secret>,
    ) -> Self {
        GatewayConfig::of(
            base_url,
            Duration::from_secs(3600),
            Credentials {
                app_id: app_id.into(),
                app_secret: app_secret.into(),
                utc_offset: 3 * 3600,
            },
        )
    }

    /// The gateway's UTC offset, in seconds east, for reading `expires_at`. Default UTC+3.
    #[must_use]
    pub fn with_utc_offset(mut self, seconds: i32) -> Self {
        self.credentials.utc_offset = seconds;
        self
    }
}

/// Fetches Sipay tokens.
#[derive(Clone, Debug)]
pub struct SipaySource {
    issuer: Issuer,
    config: SipayConfig,
}

impl SipaySource {
    /// A source sending through `sender`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the base URL is not an absolute URL.
    pub fn new(sender: impl HttpSend, config: SipayConfig) -> Result<Self, ConfigError> {
        let issuer = config
            .issuer(sender, GATEWAY, "/api/token")?
            .with_secrets([config.credentials.app_secret.expose()]);
        Ok(Self { issuer, config })
    }
}

#[async_trait]
impl TokenSource for SipaySource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched = async {
            let body = serde_json::json!({
                "app_id": self.config.credentials.app_id,
                "app_secret": self.config.credentials.app_secret.expose(),
            });
            let (status, body) = self
                .issuer
                .post(Some("application/json"), &[], Bytes::from(body.to_string()))
                .await?;
            parse(status, &body, self.config.credentials.utc_offset)
        }
        .await;
        self.issuer.fetched(fetched)
    }
}

/// Reads a token response; `expires_at` is read at `utc_offset` seconds east of UTC.
///
/// # Errors
///
/// [`GatewayError`]: a `status_code` other than 100 with its description, an error status, or
/// what is malformed.
pub fn parse(status: StatusCode, body: &[u8], utc_offset: i32) -> Result<Token, GatewayError> {
    let answer = match Answer::parse(GATEWAY, status, body) {
        Ok(answer) => answer,
        Err(_) if !status.is_success() => {
            return Err(GatewayError::Status {
                gateway: GATEWAY,
                status,
                retry_after: None,
            });
        }
        Err(malformed) => return Err(malformed),
    };
    let code = match answer.integer("/status_code") {
        Ok(code) => code,
        Err(_) if !status.is_success() => {
            return Err(GatewayError::Status {
                gateway: GATEWAY,
                status,
                retry_after: None,
            });
        }
        Err(malformed) => return Err(malformed),
    };
    if code != 100 {
        return Err(GatewayError::Refused {
            gateway: GATEWAY,
            status,
            codes: vec![GatewayCode {
                code: code.to_string(),
                message: answer.text("/status_description").unwrap_or_default(),
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
    let secret = answer.string("/data/token")?;
    let expiry = match jwt_expiry(secret) {
        Some(exp) => Expiry::At(exp),
        None => {
            let text = answer.string("/data/expires_at")?;
            Expiry::At(local_time(text, utc_offset).ok_or_else(|| {
                answer.malformed(format!(
                    "`/data/expires_at` is {text:?}, not YYYY-MM-DD HH:MM:SS"
                ))
            })?)
        }
    };
    let three_d = ThreeD::from(answer.integer("/data/is_3d")?);
    Ok(Token::new(secret)
        .with_expiry(expiry)
        .with_metadata(three_d))
}

/// The presentation: `Authorization: Bearer <token>`.
#[must_use]
pub fn presentation() -> Presentation {
    Presentation::bearer()
}

/// A shared cache of Sipay tokens. An invalid base URL is the [`ConfigError`] its `build()`
/// returns.
pub fn cache(sender: impl HttpSend, config: SipayConfig) -> TokenCacheBuilder {
    let lifetime = config.token_lifetime();
    TokenCache::try_builder(SipaySource::new(sender, config))
        .with_name(GATEWAY)
        .with_presentation(presentation())
        .with_default_lifetime(lifetime)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// The document's own success example (its JWT says `exp` 1611927961).
    pub(crate) const DOCUMENTED: &str = include_str!("../tests/data/sipay_success.json");

    fn at(token: &Token) -> u64 {
        match token.expiry() {
            Expiry::At(t) => t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_documented_example_expires_at_13_46_01_utc() {
        let token = parse(StatusCode::OK, DOCUMENTED.as_bytes(), 3 * 3600).unwrap();
        assert_eq!(at(&token), 1_611_927_961); // 2021-01-29 13:46:01 UTC
        assert_eq!(token.metadata::<ThreeD>(), Some(&ThreeD::Choice));
        assert!(token.secret().expose().starts_with("eyJ0eXAiOiJKV1Qi"));
    }

    #[test]
    fn without_a_readable_exp_expires_at_is_local_time() {
        let body = r#"{"status_code":100,"status_description":"ok","data":{"token":"opaque","is_3d":2,"expires_at":"2021-01-29 16:46:01"}}"#;
        let token = parse(StatusCode::OK, body.as_bytes(), 3 * 3600).unwrap();
        assert_eq!(at(&token), 1_611_927_961);
        assert_eq!(token.metadata::<ThreeD>(), Some(&ThreeD::ThreeDOnly));
        let utc = parse(StatusCode::OK, body.as_bytes(), 0).unwrap();
        assert_eq!(
            at(&utc) - at(&token),
            3 * 3600,
            "read as UTC it lives three hours longer"
        );
    }

    #[test]
    fn refusals_and_malformed_answers_are_typed() {
        let e = parse(
            StatusCode::OK,
            br#"{"status_code":2,"status_description":"Invalid credentials"}"#,
            0,
        )
        .unwrap_err();
        let GatewayError::Refused { codes, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            codes[0],
            GatewayCode {
                code: "2".into(),
                message: "Invalid credentials".into()
            }
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("Sipay") && e.to_string().contains("Invalid credentials"));
        for body in [
            &b"not json"[..],
            br#"{"status_description":"no code"}"#,
            br#"{"status_code":"abc"}"#,
            br#"{"status_code":100}"#,
            br#"{"status_code":100,"data":{"token":"","is_3d":1,"expires_at":"2021-01-29 16:46:01"}}"#,
            br#"{"status_code":100,"data":{"token":"t","is_3d":1,"expires_at":"tomorrow"}}"#,
            br#"{"status_code":100,"data":{"token":"t","is_3d":"x","expires_at":"2021-01-29 16:46:01"}}"#,
            br#"{"status_code":100,"data":{"token":["t"],"is_3d":1}}"#,
        ] {
            let e = parse(StatusCode::OK, body, 0).unwrap_err();
            assert!(matches!(e, GatewayError::Malformed { .. }), "{}: {e:?}", String::from_utf8_lossy(body));
        }
        assert!(matches!(
            parse(StatusCode::UNAUTHORIZED, b"", 0),
            Err(GatewayError::Status { .. })
        ));
    }
}
