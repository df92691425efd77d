//! OAuth 2.0 client credentials (RFC 6749 §4.4): the grant most APIs a client calls with its
//! own identity use.
//!
//! `POST {token_url}` with `grant_type=client_credentials` (and `scope`, `audience`,
//! `resource` and any extra parameters) form-encoded, the client authenticating with HTTP
//! Basic (`client_secret_basic`) or in the form (`client_secret_post`); the answer's
//! `access_token` is the token. How its expiry is read, which `token_type`s are sent (see
//! [`with_token_type`](ClientCredentials::with_token_type)), and what each error the endpoint
//! states ([`GatewayError::OAuth`]) makes the cache do are written out in [docs/oauth2.md].
//!
//! [docs/oauth2.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/oauth2.md
//!
//! ```
//! use tokenwarden_gateways::oauth2::{self, ClientCredentials};
//!
//! # fn sender() -> impl tokenwarden_gateways::HttpSend {
//! #     |_: http::Request<bytes::Bytes>, _: usize| async { Err::<http::Response<bytes::Bytes>, _>("offline".into()) }
//! # }
//! let credentials = ClientCredentials::new(
//!     sender(),
//!     "https://auth.example.com/oauth/token",
//!     "payments-client",
//!     "s3cr3t",
//! )?
//! .with_scopes(["payments:read", "payments:write"]);
//! assert!(!format!("{credentials:?}").contains("s3cr3t"));
//! let cache = oauth2::cache(credentials).build()?;
//! # let _ = cache;
//! # Ok::<_, tokenwarden_core::ConfigError>(())
//! ```

use async_trait::async_trait;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, StatusCode};
use std::fmt;
use std::sync::Arc;
use tokenwarden_core::{
    ConfigError, Expiry, FetchError, Presentation, Secret, Token, TokenCache, TokenCacheBuilder,
    TokenSource,
};

use crate::dpop::DpopKey;
use crate::jose::SigningKey;

mod client_auth;
mod discovery;

use crate::redact::Secrets;
use crate::wire::{Answer, Issuer, error_answer, with_expiry};
use crate::{GatewayError, HttpSend};
use client_auth::{basic_credentials, client_assertion};
use discovery::{metadata_unusable, token_endpoint};

const GATEWAY: &str = "OAuth 2.0";
const FORM: &str = "application/x-www-form-urlencoded";

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret (`client_secret_basic`):
    /// the method every server must support. The default.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form (`client_secret_post`).
    Post,
}

/// A client-credentials token source. See the [module docs](self).
#[derive(Clone)]
pub struct ClientCredentials {
    issuer: Issuer,
    client_id: String,
    client_secret: Secret,
    auth: ClientAuth,
    /// `private_key_jwt`: the key and the audience of the client's assertions (instead of a
    /// secret).
    assertion: Option<(SigningKey, String)>,
    /// `tls_client_auth` / `self_signed_tls_client_auth`: the sender's TLS client certificate
    /// authenticates the client (instead of a secret).
    by_certificate: bool,
    /// DPoP (RFC 9449): the key the tokens are bound to, proving every token request.
    dpop: Option<DpopKey>,
    scopes: Vec<String>,
    audience: Option<String>,
    resources: Vec<String>,
    params: Vec<(String, String)>,
    token_types: Vec<String>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth", &self.auth)
            .field(
                "assertion",
                &self
                    .assertion
                    .as_ref()
                    .map(|(key, aud)| (key, tokenwarden_origin::redact_url(aud))),
            )
            .field("by_certificate", &self.by_certificate)
            .field("dpop", &self.dpop)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("resources", &self.resources)
            .field(
                "params",
                &self.params.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    /// The client `client_id` with `client_secret`, at the token endpoint `token_url`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a URL that is not absolute https (plain http only to loopback).
    pub fn new(
        sender: impl HttpSend,
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> Result<Self, ConfigError> {
        let client_id = client_id.into();
        let client_secret = client_secret.into();
        // The secret as sent: itself, or inside the Basic credentials.
        let sent = [
            client_secret.expose().to_owned(),
            basic_credentials(&client_id, &client_secret),
        ];
        Self::with_credential(sender, token_url, client_id, client_secret, None, sent)
    }

    /// A source whose client authenticates with `client_secret` or, when given, `assertion`;
    /// `sent` are the credentials as they go out, kept out of errors.
    fn with_credential(
        sender: impl HttpSend,
        token_url: &str,
        client_id: String,
        client_secret: Secret,
        assertion: Option<(SigningKey, String)>,
        sent: impl IntoIterator<Item = String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            issuer: Issuer::new(Arc::new(sender), GATEWAY, token_url, "", "token_url")?
                .with_secrets(sent),
            client_id,
            client_secret,
            auth: ClientAuth::Basic,
            assertion,
            by_certificate: false,
            dpop: None,
            scopes: Vec::new(),
            audience: None,
            resources: Vec::new(),
            params: Vec::new(),
            token_types: vec!["bearer".to_owned()],
        })
    }

    /// The client `client_id` authenticating with `private_key_jwt` (RFC 7523, OpenID Connect
    /// Core §9): every token request carries a fresh assertion signed with `key` — `iss` and
    /// `sub` the client id, `aud` the token endpoint (see
    /// [`with_assertion_audience`](Self::with_assertion_audience)), a unique `jti`, `iat`
    /// (five seconds back, for a server clock a little behind), and `exp` a minute after it —
    /// instead of a secret. Register [`SigningKey::public_jwk`] with the server.
    ///
    /// ```
    /// use tokenwarden_gateways::jose::{Algorithm, SigningKey};
    /// use tokenwarden_gateways::oauth2::ClientCredentials;
    /// # fn sender() -> impl tokenwarden_gateways::HttpSend {
    /// #     |_: http::Request<bytes::Bytes>, _: usize| async { Err::<http::Response<bytes::Bytes>, _>("offline".into()) }
    /// # }
    /// # let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBkKy7dkj1QXmJqsD8BPN2sHD3NXH9JXAbs6W6I0eRx3\n-----END PRIVATE KEY-----";
    /// let key = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, pem)?.with_key_id("k1");
    /// let credentials = ClientCredentials::private_key_jwt(
    ///     sender(),
    ///     "https://auth.example.com/oauth/token",
    ///     "payments-client",
    ///     key,
    /// )?;
    /// # let _ = credentials;
    /// # Ok::<_, tokenwarden_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a URL that is not absolute https (plain http only to loopback).
    pub fn private_key_jwt(
        sender: impl HttpSend,
        token_url: &str,
        client_id: impl Into<String>,
        key: SigningKey,
    ) -> Result<Self, ConfigError> {
        // No secret: each assertion is kept out of errors as it is made.
        Self::with_credential(
            sender,
            token_url,
            client_id.into(),
            Secret::new(String::new()),
            Some((key, token_url.to_owned())),
            [],
        )?
        .without_url_credentials()
    }

    /// The client `client_id` authenticating with the TLS client certificate its sender
    /// presents (RFC 8705: `tls_client_auth`, or `self_signed_tls_client_auth` for a
    /// certificate registered with the server): the token request carries the client id and
    /// no secret. Give the sender the certificate and its key, e.g.
    /// `IssuerClient::from_builder(reqwest::Client::builder().identity(identity))`. A server
    /// that binds its tokens to the certificate (`cnf` with `x5t#S256`) accepts them only from
    /// an API client presenting the same one: build the layer's client with the same identity.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a URL that is not absolute `https` (a certificate is presented only
    /// in TLS).
    pub fn tls_client_auth(
        sender: impl HttpSend,
        token_url: &str,
        client_id: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        if !token_url
            .trim()
            .to_ascii_lowercase()
            .starts_with("https://")
        {
            return Err(ConfigError::Invalid {
                name: "token_url",
                reason: "must be https for TLS client authentication: the certificate is \
                         presented in the TLS handshake",
            });
        }
        let mut credentials = Self::with_credential(
            sender,
            token_url,
            client_id.into(),
            Secret::new(String::new()),
            None,
            [],
        )?
        .without_url_credentials()?;
        credentials.by_certificate = true;
        Ok(credentials)
    }

    /// Refuses a token URL with `user:password@` (which the issuer would send as HTTP Basic)
    /// for a client that authenticates with a key or a certificate: servers refuse two methods
    /// at once.
    fn without_url_credentials(self) -> Result<Self, ConfigError> {
        if self.issuer.has_url_credentials() {
            return Err(ConfigError::Invalid {
                name: "token_url",
                reason: "has credentials (user:password@), but this client authenticates with \
                         its key or certificate: two methods at once are refused by servers",
            });
        }
        Ok(self)
    }

    /// The `aud` of the client's assertions (with
    /// [`private_key_jwt`](Self::private_key_jwt)). Default the token endpoint's URL, as RFC
    /// 7523 says; FAPI 2.0 servers take the issuer's identifier, which
    /// [`discover_private_key_jwt`](Self::discover_private_key_jwt) puts here.
    #[must_use]
    pub fn with_assertion_audience(mut self, audience: impl Into<String>) -> Self {
        if let Some((_, aud)) = &mut self.assertion {
            *aud = audience.into();
        }
        self
    }

    /// [`discover`](Self::discover) for a client authenticating with `private_key_jwt`: the
    /// assertions' audience is the issuer's identifier.
    ///
    /// # Errors
    ///
    /// As [`discover`](Self::discover).
    pub async fn discover_private_key_jwt<S: HttpSend + Clone>(
        sender: S,
        issuer: &str,
        client_id: impl Into<String>,
        key: SigningKey,
    ) -> Result<Self, GatewayError> {
        let (named, endpoint) = token_endpoint(sender.clone(), issuer).await?;
        // The issuer as its metadata names it (a trailing slash included): the audience the
        // server compares with.
        Ok(Self::private_key_jwt(sender, &endpoint, client_id, key)
            .map_err(metadata_unusable)?
            .with_assertion_audience(named))
    }

    /// Finds the token endpoint in the metadata of the authorization server `issuer` (RFC
    /// 8414's `/.well-known/oauth-authorization-server`, else OpenID Connect's
    /// `/.well-known/openid-configuration`) and makes the source for it. The metadata is read
    /// under the same rules as token requests: no redirect followed, https off loopback; it
    /// must name `issuer` as its own (RFC 8414 §3.3), and the `token_endpoint` it names must
    /// meet the same rules.
    ///
    /// # Errors
    ///
    /// [`GatewayError`] when neither document can be had or neither names a usable
    /// `token_endpoint`.
    pub async fn discover<S: HttpSend + Clone>(
        sender: S,
        issuer: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> Result<Self, GatewayError> {
        let (_, endpoint) = token_endpoint(sender.clone(), issuer).await?;
        Self::new(sender, &endpoint, client_id, client_secret).map_err(metadata_unusable)
    }

    /// How the client authenticates with its secret. Default [`ClientAuth::Basic`]. (A
    /// [`private_key_jwt`](Self::private_key_jwt) client authenticates with its assertions.)
    #[must_use]
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Asks for tokens bound to `key` (DPoP, RFC 9449): every token request carries a proof
    /// of the key (`htm` `POST`, `htu` the token endpoint, the endpoint's newest nonce), the
    /// answer must be a `DPoP` token, and [`cache`] presents the tokens as `Authorization:
    /// DPoP <token>` with a fresh proof on every API request. An endpoint that answers `400`
    /// `use_dpop_nonce` is asked again at once with the nonce it gave (RFC 9449 §8).
    ///
    /// ```
    /// use tokenwarden_gateways::dpop::DpopKey;
    /// use tokenwarden_gateways::jose::{Algorithm, SigningKey};
    /// use tokenwarden_gateways::oauth2::{self, ClientCredentials};
    /// # fn sender() -> impl tokenwarden_gateways::HttpSend {
    /// #     |_: http::Request<bytes::Bytes>, _: usize| async { Err::<http::Response<bytes::Bytes>, _>("offline".into()) }
    /// # }
    /// # let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBkKy7dkj1QXmJqsD8BPN2sHD3NXH9JXAbs6W6I0eRx3\n-----END PRIVATE KEY-----";
    /// let key = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, pem)?;
    /// let credentials = ClientCredentials::private_key_jwt(
    ///     sender(),
    ///     "https://auth.example.com/oauth/token",
    ///     "payments-client",
    ///     key.clone(),
    /// )?
    /// .with_dpop(DpopKey::new(key));
    /// let cache = oauth2::cache(credentials).build()?;
    /// assert!(cache.presentation().dpop_key().is_some());
    /// # Ok::<_, tokenwarden_core::ConfigError>(())
    /// ```
    #[must_use]
    pub fn with_dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(key);
        // A bearer token is not what was asked for; any other type allowed stays allowed.
        self.token_types.retain(|t| t != "bearer");
        self.token_types.push("dpop".to_owned());
        self
    }

    /// The scopes to ask for (sent space-separated as `scope`).
    #[must_use]
    pub fn with_scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// The `audience` to ask for (Auth0, Okta and others).
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// A `resource` indicator (RFC 8707); may be given more than once.
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Any other form parameter the endpoint wants. Its value is treated as a secret: never
    /// printed.
    #[must_use]
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let value = value.into();
        self.issuer = self.issuer.with_secrets([&value]);
        self.params.push((name.into(), value));
        self
    }

    /// Accepts tokens of this `token_type` (any case) besides `Bearer` (`DPoP` with
    /// [`with_dpop`](Self::with_dpop)). Give the cache a
    /// presentation that sends them as the type requires.
    #[must_use]
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_types
            .push(token_type.into().to_ascii_lowercase());
        self
    }

    /// The request's form body and headers, and the client assertion it carries, if any.
    #[allow(clippy::type_complexity)]
    fn request(
        &self,
    ) -> Result<(Secret, Vec<(HeaderName, HeaderValue)>, Option<Secret>), GatewayError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !self.scopes.is_empty() {
            form.append_pair("scope", &self.scopes.join(" "));
        }
        if let Some(audience) = &self.audience {
            form.append_pair("audience", audience);
        }
        for resource in &self.resources {
            form.append_pair("resource", resource);
        }
        for (name, value) in &self.params {
            form.append_pair(name, value);
        }
        let mut headers = Vec::new();
        if let Some(key) = &self.dpop {
            let proof = key.proof("POST", &self.issuer.url(), None).map_err(|e| {
                GatewayError::Malformed {
                    gateway: GATEWAY,
                    status: StatusCode::OK,
                    problem: format!("the DPoP proof cannot be made: {e}"),
                }
            })?;
            headers.push((tokenwarden_core::dpop::DPOP, proof));
        }
        if self.by_certificate {
            form.append_pair("client_id", &self.client_id);
            return Ok((Secret::new(form.finish()), headers, None));
        }
        if let Some((key, audience)) = &self.assertion {
            form.append_pair("client_id", &self.client_id);
            form.append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            );
            let assertion = client_assertion(key, &self.client_id, audience)?;
            form.append_pair("client_assertion", assertion.expose());
            return Ok((Secret::new(form.finish()), headers, Some(assertion)));
        }
        match self.auth {
            ClientAuth::Post => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", self.client_secret.expose());
            }
            ClientAuth::Basic => {
                let basic = basic_credentials(&self.client_id, &self.client_secret);
                let mut value = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
                    GatewayError::Malformed {
                        gateway: GATEWAY,
                        status: StatusCode::OK,
                        problem: "the client credentials cannot be sent in a header".into(),
                    }
                })?;
                value.set_sensitive(true);
                headers.push((AUTHORIZATION, value));
            }
        }
        Ok((Secret::new(form.finish()), headers, None))
    }

    /// Reads a token endpoint's answer.
    ///
    /// # Errors
    ///
    /// [`GatewayError::OAuth`] for a standard error answer, [`GatewayError::Status`] for
    /// another error status, [`GatewayError::UnsupportedTokenType`] for a token type not
    /// accepted, [`GatewayError::Malformed`] for an answer without a token.
    /// Any credential of this source's that the answer echoes is taken out of the error.
    pub fn parse(&self, status: StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
        self.read(status, body)
            .map_err(|error| self.issuer.redacted(error))
    }

    fn read(&self, status: StatusCode, body: &[u8]) -> Result<Token, GatewayError> {
        if !status.is_success() {
            return Err(error_answer(GATEWAY, status, body));
        }
        let answer = Answer::parse(GATEWAY, status, body)?;
        let secret = answer.string("/access_token")?;
        // `token_type` is REQUIRED (§5.1); a server that leaves it out is taken as Bearer.
        let given = answer.text("/token_type");
        let token_type = given.as_deref().unwrap_or("Bearer");
        if !self
            .token_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token_type))
        {
            return Err(GatewayError::UnsupportedTokenType {
                gateway: GATEWAY,
                expected: if self.dpop.is_some() {
                    "DPoP"
                } else {
                    "Bearer"
                },
                token_type: given
                    .as_deref()
                    .unwrap_or("(none given, taken as Bearer)")
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(40)
                    .collect(),
            });
        }
        let stated = answer.seconds("/expires_in")?.map(Expiry::In);
        Ok(with_expiry(Token::new(secret), secret, stated))
    }
}

#[async_trait]
impl TokenSource for ClientCredentials {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched = async {
            // A DPoP endpoint may ask for its nonce first (`400 use_dpop_nonce`): once, at
            // once, with a new assertion (a `jti` is never sent twice).
            let mut nonce_asked = false;
            loop {
                let (answer, assertion, nonce_given) = self.exchange().await?;
                if let Err(GatewayError::OAuth { error, .. }) = &answer
                    && error == "use_dpop_nonce"
                    && nonce_given
                    && !std::mem::replace(&mut nonce_asked, true)
                {
                    continue;
                }
                // The assertion is a credential for its minute: no error repeats it.
                break answer.map_err(|error| match &assertion {
                    Some(assertion) => {
                        error.redacted(&Secrets::default().with([assertion.expose()]))
                    }
                    None => error,
                });
            }
        }
        .await;
        self.issuer.fetched(fetched)
    }
}

impl ClientCredentials {
    /// One token request and its answer, read; the client assertion it carried, if any; and
    /// whether the answer gave a DPoP nonce, remembered for the next proof.
    #[allow(clippy::type_complexity)]
    async fn exchange(
        &self,
    ) -> Result<(Result<Token, GatewayError>, Option<Secret>, bool), GatewayError> {
        let (form, headers, assertion) = self.request()?;
        let body = Bytes::copy_from_slice(form.expose().as_bytes());
        let mut nonce_given = false;
        let answer = async {
            let (status, answer_headers, body) = self
                .issuer
                .post_with_headers(Some(FORM), &headers, body)
                .await?;
            if let Some(key) = &self.dpop
                && let Some(nonce) = answer_headers
                    .get(tokenwarden_core::dpop::DPOP_NONCE)
                    .and_then(|n| n.to_str().ok())
            {
                tokenwarden_core::DpopProver::remember_nonce(key, &self.issuer.url(), nonce);
                nonce_given = true;
            }
            self.read(status, &body)
        }
        .await;
        Ok((answer, assertion, nonce_given))
    }
}

/// A cache for `credentials`: named `"oauth2"`, presenting `Authorization: Bearer` (or, for
/// a source [`with_dpop`](ClientCredentials::with_dpop), `Authorization: DPoP` and a proof of
/// its key on every request: [`Presentation::dpop`]).
pub fn cache(credentials: ClientCredentials) -> TokenCacheBuilder {
    let presentation = match &credentials.dpop {
        Some(key) => Presentation::dpop(Arc::new(key.clone())),
        None => Presentation::bearer(),
    };
    TokenCache::builder(credentials)
        .with_name("oauth2")
        .with_presentation(presentation)
}
