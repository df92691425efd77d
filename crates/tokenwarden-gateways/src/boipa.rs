//! BOIPA Gateway session tokens: one token per action request, single-use.
//!
//! `POST {base}/token`, form-urlencoded: `merchantId`, `password`, `action`, `timestamp` (the
//! current time in milliseconds, fresh for every request), `allowOriginUrl`, and the action's
//! parameters (`brandId`, `channel`, `country`, `language`, `amount`, `currency`,
//! `forceSecurePayment`). The answer is HTTP 200 either way: `result: "success"` with `token`,
//! or `result: "failure"` with `errors[]` and `resultId`, which becomes
//! [`GatewayError::Refused`] carrying every code.
//!
//! A session token authorises the one action request it was asked for, so the cache runs in
//! single-use mode ([`cache`]); the token goes in a `Token` header by default.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, StatusCode};
use tokenwarden_core::{
    ConfigError, FetchError, Presentation, Secret, Token, TokenCache, TokenCacheBuilder,
    TokenSource,
};

use crate::wire::{Answer, Issuer, UrlText};
use crate::{GatewayCode, GatewayConfig, GatewayError, HttpSend};

const GATEWAY: &str = "BOIPA";

/// The UAT base URL.
pub const UAT_BASE_URL: &str = "https://apiuat.test.boipapaymentgateway.com";

/// The action a session token is requested for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `TOKENIZE`
    Tokenize,
    /// `AUTH`
    Auth,
    /// `PURCHASE`
    Purchase,
    /// `VERIFY`
    Verify,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Tokenize => "TOKENIZE",
            Action::Auth => "AUTH",
            Action::Purchase => "PURCHASE",
            Action::Verify => "VERIFY",
        }
    }
}

/// The merchant's credentials, in a [`BoipaConfig`].
#[derive(Clone, Debug)]
pub struct Credentials {
    merchant_id: u64,
    password: Secret,
    allow_origin_url: UrlText,
    brand_id: Option<String>,
}

/// The merchant's credentials and settings ([`GatewayConfig`] has the settings every gateway
/// shares).
pub type BoipaConfig = GatewayConfig<Credentials>;

impl BoipaConfig {
    /// Credentials for `base_url` (e.g. [`UAT_BASE_URL`]); `allow_origin_url` is the origin
    /// the gateway's CORS headers will allow. An unused session token is kept for 5 minutes
    /// (the gateway states none): see [`with_token_lifetime`](GatewayConfig::with_token_lifetime).
    pub fn new(
        base_url: impl Into<String>,
        merchant_id: u64,
        password: impl Into<Secret>,
        allow_origin_url: impl Into<String>,
    ) -> Self {
        GatewayConfig::of(
            base_url,
            Duration::from_secs(300),
            Credentials {
                merchant_id,
                password: password.into(),
                allow_origin_url: UrlText(allow_origin_url.into()),
                brand_id: None,
            },
        )
    }

    /// The merchant's brand.
    #[must_use]
    pub fn with_brand_id(mut self, brand_id: impl Into<String>) -> Self {
        self.credentials.brand_id = Some(brand_id.into());
        self
    }
}

/// The action and its parameters: the inputs a token is requested with.
#[derive(Clone, Debug)]
pub struct ActionRequest {
    action: Action,
    fields: Vec<(&'static str, String)>,
}

impl ActionRequest {
    /// A token for `action`, with no further parameters.
    #[must_use]
    pub fn new(action: Action) -> Self {
        Self {
            action,
            fields: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.retain(|(n, _)| *n != name);
        self.fields.push((name, value.into()));
        self
    }

    /// `channel`: `ECOM` or `MOTO`.
    #[must_use]
    pub fn with_channel(self, channel: impl Into<String>) -> Self {
        self.with("channel", channel)
    }

    /// `country`: ISO code.
    #[must_use]
    pub fn with_country(self, country: impl Into<String>) -> Self {
        self.with("country", country)
    }

    /// `language`: ISO code.
    #[must_use]
    pub fn with_language(self, language: impl Into<String>) -> Self {
        self.with("language", language)
    }

    /// `amount` and `currency`.
    #[must_use]
    pub fn with_amount(self, amount: impl Into<String>, currency: impl Into<String>) -> Self {
        self.with("amount", amount).with("currency", currency)
    }

    /// `forceSecurePayment`.
    #[must_use]
    pub fn with_force_secure_payment(self, force: bool) -> Self {
        self.with("forceSecurePayment", force.to_string())
    }
}

/// BOIPA's `resultId` of the request that produced a token, kept as token metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultId(pub String);

/// Fetches one BOIPA session token per call.
#[derive(Clone, Debug)]
pub struct BoipaSource {
    issuer: Issuer,
    config: BoipaConfig,
    request: ActionRequest,
}

impl BoipaSource {
    /// A source for `request`, sending through `sender`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the base URL is not an absolute URL.
    pub fn new(
        sender: impl HttpSend,
        config: BoipaConfig,
        request: ActionRequest,
    ) -> Result<Self, ConfigError> {
        let issuer = config
            .issuer(sender, GATEWAY, "/token")?
            .with_secrets([config.credentials.password.expose()]);
        Ok(Self {
            issuer,
            config,
            request,
        })
    }

    /// The form fields of one token request, `timestamp` taken now.
    fn form(&self) -> String {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let credentials = &self.config.credentials;
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("merchantId", &credentials.merchant_id.to_string())
            .append_pair("password", credentials.password.expose())
            .append_pair("action", self.request.action.as_str())
            .append_pair("timestamp", &timestamp.to_string())
            .append_pair("allowOriginUrl", &credentials.allow_origin_url.0);
        if let Some(brand) = &credentials.brand_id {
            form.append_pair("brandId", brand);
        }
        for (name, value) in &self.request.fields {
            form.append_pair(name, value);
        }
        form.finish()
    }
}

#[async_trait]
impl TokenSource for BoipaSource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched = async {
            let form = Bytes::from(self.form());
            let (status, body) = self
                .issuer
                .post(Some("application/x-www-form-urlencoded"), &[], form)
                .await?;
            Ok(parse(status, &body)?.with_expires_in(self.config.token_lifetime()))
        }
        .await;
        self.issuer.fetched(fetched)
    }
}

/// Reads a token response (exposed for tests and custom transports).
///
/// # Errors
///
/// [`GatewayError`]: the gateway's refusal with every code, an error status, or what is
/// malformed.
pub fn parse(status: StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
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
    match answer.get("/result").and_then(|r| r.as_str()) {
        Some("success") if status.is_success() => {
            let token = answer.string("/token")?;
            let mut token = Token::new(token);
            if let Some(id) = answer.text("/resultId") {
                token = token.with_metadata(ResultId(id));
            }
            Ok(token)
        }
        Some("failure") => Err(refusal(&answer)),
        _ if !status.is_success() => Err(GatewayError::Status {
            gateway: GATEWAY,
            status,
            retry_after: None,
        }),
        Some(other) => Err(answer.malformed(format!(
            "`/result` is {other:?}, not \"success\" or \"failure\""
        ))),
        None => Err(answer.malformed("`/result` is missing")),
    }
}

fn refusal(answer: &Answer) -> GatewayError {
    let codes = answer
        .get("/errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| GatewayCode {
                    code: e
                        .get("fieldName")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    message: e
                        .get("messageCode")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    GatewayError::Refused {
        gateway: GATEWAY,
        status: answer.status,
        codes,
        reference: answer.text("/resultId"),
        retryable: false,
    }
}

/// The default presentation: `Token: <token>` (configurable: the document does not say).
#[must_use]
pub fn presentation() -> Presentation {
    Presentation::header(HeaderName::from_static("token"))
}

/// A single-use cache for `request`, optionally with a pool of `pool` tokens fetched ahead (for
/// actions without an amount, such as `TOKENIZE` or `VERIFY`).
/// An invalid base URL is the [`ConfigError`] its `build()` returns.
pub fn cache(
    sender: impl HttpSend,
    config: BoipaConfig,
    request: ActionRequest,
    pool: usize,
) -> TokenCacheBuilder {
    let lifetime = config.token_lifetime();
    TokenCache::try_builder(BoipaSource::new(sender, config, request))
        .with_name(GATEWAY)
        .with_presentation(presentation())
        .with_default_lifetime(lifetime)
        .with_clock_skew(Duration::ZERO)
        .with_pool(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str) -> GatewayError {
        parse(StatusCode::from_u16(status).unwrap(), body.as_bytes()).unwrap_err()
    }

    #[test]
    fn reads_the_documented_success() {
        let body = r#"{"result":"success","resultId":"8b181452-d0fc-4758-bb7f-a6d5c24a3b22","merchantId":"123","additionalDetails":{},"processingTime":15,"token":"52ab583d-e771-49e9-8931-36efd7a3603e"}"#;
        let token = parse(StatusCode::OK, body.as_bytes()).unwrap();
        assert_eq!(
            token.secret().expose(),
            "52ab583d-e771-49e9-8931-36efd7a3603e"
        );
        assert_eq!(
            token.metadata::<ResultId>(),
            Some(&ResultId("8b181452-d0fc-4758-bb7f-a6d5c24a3b22".into()))
        );
    }

    #[test]
    fn a_failure_carries_every_code_and_the_result_id() {
        let body = r#"{"result":"failure","resultId":"53e7926b","additionalDetails":{},"errors":[{"messageCode":"This field is required in [REQUEST]","fieldName":"password"},{"messageCode":"Invalid value","fieldName":"action"}],"processingTime":5}"#;
        let e = err(200, body);
        let GatewayError::Refused {
            codes, reference, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(reference.as_deref(), Some("53e7926b"));
        assert_eq!(codes.len(), 2);
        assert_eq!(codes[0].code, "password");
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(
            text.contains("BOIPA")
                && text.contains("53e7926b")
                && text.contains("This field is required")
        );
    }

    #[test]
    fn malformed_and_failed_answers_are_typed() {
        // the document's own examples, as written
        let wrapped = "[\n {\"result\":\"success\",\"token\":\"52ab\"},\n]";
        assert!(matches!(err(200, wrapped), GatewayError::Malformed { .. }));
        let double_comma =
            r#"{"result":"failure","resultId":"x","additionalDetails":{},,"errors":[]}"#;
        assert!(matches!(
            err(200, double_comma),
            GatewayError::Malformed { .. }
        ));
        for body in [
            "<html>bad gateway</html>",
            r#"{"result":"success"}"#,
            r#"{"result":"success","token":""}"#,
            r#"{"result":"success","token":42}"#,
            r#"{"result":"maybe","token":"t"}"#,
            r#"{"token":"t"}"#,
            r#"["token"]"#,
        ] {
            let e = err(200, body);
            assert!(matches!(e, GatewayError::Malformed { .. }), "{body}: {e:?}");
            assert!(e.is_retryable());
        }
        let e = err(401, "unauthorized");
        assert!(matches!(e, GatewayError::Status { .. }) && !e.is_retryable());
        let e = err(503, "");
        assert!(matches!(e, GatewayError::Status { .. }) && e.is_retryable());
    }
}
