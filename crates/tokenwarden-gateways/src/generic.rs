//! A token source for the many APIs that follow the same pattern: POST credentials as JSON or
//! as a form, read the token (and optionally its lifetime or expiry) from the JSON answer.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokenwarden_core::{ConfigError, Expiry, FetchError, Secret, Token, TokenSource};

use crate::wire::{Answer, Issuer, error_answer, with_expiry};
use crate::{GatewayError, HttpSend};

/// How the expiry is read from the answer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ExpiryField {
    /// No field: the JWT `exp` if the token is a JWT, else the cache's default lifetime.
    None,
    /// Seconds from now, at this JSON pointer (OAuth's `/expires_in`): any non-negative
    /// number, or a string of one. When the token is a JWT too, the earlier of this and its
    /// `exp`. When the field is absent (OAuth only recommends it): the JWT `exp` if the token
    /// is a JWT, else the cache's default lifetime.
    InSeconds(String),
    /// Seconds since the Unix epoch, at this JSON pointer; with a JWT or when absent, as for
    /// `InSeconds`.
    AtUnixSeconds(String),
}

/// POSTs credentials and reads the token by JSON pointer.
///
/// Every value it sends — in the body (but `grant_type`, `scope`, `audience`, `resource` and
/// `client_id`) and in headers given to [`with_header`](Self::with_header) — is a credential to
/// it: should the issuer echo one, it is replaced by `[redacted]` in the error.
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

/// Credential fields whose values are not secrets: an error that quotes them keeps them.
/// Every other value a source sends is taken out of its errors' text (see
/// [`JsonSource`]).
const PUBLIC_FIELDS: [&str; 5] = ["grant_type", "scope", "audience", "resource", "client_id"];

/// Every value of `body` (strings and numbers, at any depth) but those of [`PUBLIC_FIELDS`].
fn secret_values(body: &serde_json::Value, field: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match body {
        Value::Object(fields) => {
            for (name, value) in fields {
                secret_values(value, name, out);
            }
        }
        Value::Array(values) => {
            for value in values {
                secret_values(value, field, out);
            }
        }
        _ if PUBLIC_FIELDS.contains(&field) => {}
        Value::String(text) => out.push(text.clone()),
        Value::Number(number) => out.push(number.to_string()),
        Value::Bool(_) | Value::Null => {}
    }
}

impl JsonSource {
    fn new(
        sender: impl HttpSend,
        url: &str,
        content_type: &'static str,
        body: String,
        secrets: Vec<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            issuer: Issuer::new(Arc::new(sender), "token issuer", url, "", "url")?
                .with_secrets(secrets),
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
        let mut secrets = Vec::new();
        secret_values(&body, "", &mut secrets);
        Self::new(sender, url, "application/json", body.to_string(), secrets)
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
        let fields: Vec<(&str, &str)> = fields.into_iter().collect();
        let secrets = fields
            .iter()
            .filter(|(name, _)| !PUBLIC_FIELDS.contains(name))
            .map(|(_, value)| (*value).to_owned())
            .collect();
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        Self::new(
            sender,
            url,
            "application/x-www-form-urlencoded",
            body,
            secrets,
        )
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
        let value_text = value.expose();
        let mut value =
            HeaderValue::from_str(value.expose()).map_err(|_| ConfigError::Invalid {
                name: "header",
                reason: "must be a valid header value",
            })?;
        value.set_sensitive(true);
        self.headers.push((name, value));
        self.issuer = self.issuer.with_secrets([value_text]);
        Ok(self)
    }

    /// Reads a token answer by this source's pointers.
    ///
    /// # Errors
    ///
    /// [`GatewayError`] for an error status or a malformed answer. Any credential of this
    /// source's that the answer echoes is taken out of it.
    pub fn parse(&self, status: http::StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
        self.read(status, body)
            .map_err(|error| self.issuer.redacted(error))
    }

    fn read(&self, status: http::StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
        if !status.is_success() {
            return Err(error_answer(self.name, status, body));
        }
        let answer = Answer::parse(self.name, status, body)?;
        let secret = answer.string(&self.token_pointer)?;
        // Absent (OAuth's `expires_in` is only RECOMMENDED): the JWT's, else the default.
        // Both there: the earlier.
        let stated =
            match &self.expiry {
                ExpiryField::None => None,
                ExpiryField::InSeconds(pointer) => answer.seconds(pointer)?.map(Expiry::In),
                ExpiryField::AtUnixSeconds(pointer) => match answer.seconds(pointer)? {
                    Some(secs) => Some(Expiry::At(UNIX_EPOCH.checked_add(secs).ok_or_else(
                        || answer.malformed(format!("`{pointer}` is out of range")),
                    )?)),
                    None => None,
                },
            };
        Ok(with_expiry(Token::new(secret), secret, stated))
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
            self.read(status, &body)
        }
        .await;
        self.issuer.fetched(fetched)
    }
}
