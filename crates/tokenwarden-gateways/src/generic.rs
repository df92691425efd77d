//! A token source for the many APIs that follow the same pattern: POST credentials as JSON or
//! as a form, read the token (and optionally its lifetime or expiry) from the JSON answer.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokenwarden_core::{ConfigError, FetchError, Secret, Token, TokenSource};

use crate::wire::{Answer, Issuer, error_answer, with_jwt_expiry};
use crate::{GatewayError, HttpSend};

/// How the expiry is read from the answer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ExpiryField {
    /// No field: the JWT `exp` if the token is a JWT, else the cache's default lifetime.
    None,
    /// Seconds from now, at this JSON pointer (OAuth's `/expires_in`), a number or a string of
    /// digits. When the field is absent (OAuth only recommends it): the JWT `exp` if the token
    /// is a JWT, else the cache's default lifetime.
    InSeconds(String),
    /// Seconds since the Unix epoch, at this JSON pointer; when absent, as for `InSeconds`.
    AtUnixSeconds(String),
}

/// POSTs credentials and reads the token by JSON pointer.
///
/// ```
/// use tokenwarden_core::Secret;
/// use tokenwarden_gateways::generic::{ExpiryField, JsonSource};
///
/// # fn sender() -> impl tokenwarden_gateways::HttpSend {
/// #     |_: http::Request<bytes::Bytes>, _: usize| async { Err::<http::Response<bytes::Bytes>, _>("offline".into()) }
/// # }
/// let source = JsonSource::json(
///     sender(),
///     "https://auth.example.com/oauth/token",
///     serde_json::json!({"grant_type": "client_credentials", "client_id": "app", "client_secret": "s3cr3t"}),
/// )?
/// .with_token_pointer("/access_token")
/// .with_expiry(ExpiryField::InSeconds("/expires_in".into()));
/// assert!(!format!("{source:?}").contains("s3cr3t"));
/// # Ok::<_, tokenwarden_core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct JsonSource {
    issuer: Issuer,
    name: &'static str,
    content_type: &'static str,
    /// The credentials, serialized.
    body: Secret,
    /// Extra request headers (sensitive).
    headers: Vec<(HeaderName, HeaderValue)>,
    token_pointer: String,
    expiry: ExpiryField,
}

impl JsonSource {
    fn new(
        sender: impl HttpSend,
        url: &str,
        content_type: &'static str,
        body: String,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            issuer: Issuer::new(Arc::new(sender), "token issuer", url, "", "url")?,
            name: "token issuer",
            content_type,
            body: Secret::new(body),
            headers: Vec::new(),
            token_pointer: "/access_token".into(),
            expiry: ExpiryField::None,
        })
    }

    /// POSTs `body` as JSON to `url`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the URL is not absolute.
    pub fn json(
        sender: impl HttpSend,
        url: &str,
        body: serde_json::Value,
    ) -> Result<Self, ConfigError> {
        Self::new(sender, url, "application/json", body.to_string())
    }

    /// POSTs `fields` form-urlencoded to `url`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the URL is not absolute.
    pub fn form<'a>(
        sender: impl HttpSend,
        url: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        Self::new(sender, url, "application/x-www-form-urlencoded", body)
    }

    /// The name errors and logs use for this issuer.
    #[must_use]
    pub fn with_name(mut self, name: &'static str) -> Self {
        self.name = name;
        self.issuer = self.issuer.with_gateway(name);
        self
    }

    /// Where the token is in the answer. Default `/access_token`.
    #[must_use]
    pub fn with_token_pointer(mut self, pointer: impl Into<String>) -> Self {
        self.token_pointer = pointer.into();
        self
    }

    /// How the expiry is read. Default: the JWT `exp`, else the cache's default lifetime.
    #[must_use]
    pub fn with_expiry(mut self, expiry: ExpiryField) -> Self {
        self.expiry = expiry;
        self
    }

    /// A header sent with the token request (marked sensitive: it may be a credential).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the value cannot be a header value.
    pub fn with_header(mut self, name: HeaderName, value: &Secret) -> Result<Self, ConfigError> {
        let mut value =
            HeaderValue::from_str(value.expose()).map_err(|_| ConfigError::Invalid {
                name: "header",
                reason: "must be a valid header value",
            })?;
        value.set_sensitive(true);
        self.headers.push((name, value));
        Ok(self)
    }

    /// Reads a token answer by this source's pointers.
    ///
    /// # Errors
    ///
    /// [`GatewayError`] for an error status or a malformed answer.
    pub fn parse(&self, status: http::StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
        if !status.is_success() {
            return Err(error_answer(self.name, status, body));
        }
        let answer = Answer::parse(self.name, status, body)?;
        let secret = answer.string(&self.token_pointer)?;
        let token = Token::new(secret);
        // Absent (OAuth's `expires_in` is only RECOMMENDED): the JWT's, else the default.
        Ok(match &self.expiry {
            ExpiryField::None => with_jwt_expiry(token, secret),
            ExpiryField::InSeconds(pointer) => match answer.seconds(pointer)? {
                Some(secs) => token.with_expires_in(Duration::from_secs(secs)),
                None => with_jwt_expiry(token, secret),
            },
            ExpiryField::AtUnixSeconds(pointer) => match answer.seconds(pointer)? {
                Some(secs) => token.with_expires_at(UNIX_EPOCH + Duration::from_secs(secs)),
                None => with_jwt_expiry(token, secret),
            },
        })
    }
}

#[async_trait]
impl TokenSource for JsonSource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched = async {
            let body = Bytes::copy_from_slice(self.body.expose().as_bytes());
            let (status, body) = self
                .issuer
                .post(Some(self.content_type), &self.headers, body)
                .await?;
            self.parse(status, &body)
        }
        .await;
        self.issuer.fetched(fetched)
    }
}
