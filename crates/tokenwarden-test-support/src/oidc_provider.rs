//! An OpenID-certified authorization server on loopback (the `oauth2-server` feature):
//! `oidc-provider` on Node.js, configured by `interop/oidc-provider/server.mjs`, for
//! `private_key_jwt` client authentication.

use std::process::Child;

use serde_json::{Value, json};

const HOW_TO_INSTALL: &str = "the private_key_jwt interop tests run oidc-provider (npm) on \
     Node.js 20.19+, 22.12+ or 24: install Node.js (https://nodejs.org; where only an older \
     npm exists, `npm install -g node@22`), then run `scripts/install-oidc-provider.sh` from the \
     repository root";

/// `oidc-provider` running on a loopback port with the clients a test registers, stopped
/// when dropped. Its issuer is `http://127.0.0.1:<port>` (`https` with
/// [`start_tls`](Self::start_tls)); its metadata is at
/// `{issuer}/.well-known/openid-configuration`.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    issuer: String,
}

impl OidcProvider {
    /// Starts the server with `clients`: each a client id and the public JWK (with `alg`) it
    /// signs its assertions with.
    ///
    /// # Panics
    ///
    /// If Node.js or the server is missing or cannot be installed (the message says how to
    /// install them), or the server does not come up within 30 s.
    pub async fn start(clients: &[(&str, Value)]) -> Self {
        let clients: Vec<Value> = clients
            .iter()
            .map(|(id, jwk)| json!({"client_id": id, "jwk": jwk}))
            .collect();
        Self::spawn(Value::Array(clients), None).await
    }

    /// Starts the server over https, with its own `key` and `cert` (PEM), asking every client
    /// for a certificate: `clients` is the JSON list `server.mjs` takes (each with a
    /// `client_id`, a `jwk` and an `auth` method such as `self_signed_tls_client_auth`).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_tls(clients: Value, key: &str, cert: &str) -> Self {
        Self::spawn(clients, Some(json!({"key": key, "cert": cert}))).await
    }

    /// Starts the server over http with `clients` (the JSON list `server.mjs` takes) and
    /// `options` (`{"dpop": true, "require_nonce": true, "ttl": 6}`: see `server.mjs`).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_with(clients: Value, options: Value) -> Self {
        Self::spawn_args(vec![clients, Value::Null, options]).await
    }

    async fn spawn(clients: Value, tls: Option<Value>) -> Self {
        Self::spawn_args(std::iter::once(clients).chain(tls).collect()).await
    }

    async fn spawn_args(args: Vec<Value>) -> Self {
        let args: Vec<String> = args.iter().map(Value::to_string).collect();
        tokio::task::spawn_blocking(move || Self::start_blocking(&args))
            .await
            .expect("starting the OpenID Connect server")
    }

    fn start_blocking(args: &[String]) -> Self {
        let (child, started) = crate::node_server::start(
            "oidc-provider",
            "install-oidc-provider.sh",
            args,
            "the OpenID Connect server",
            HOW_TO_INSTALL,
        );
        let issuer = started["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("the server's start line lacks its issuer: {started}"))
            .to_owned();
        Self { child, issuer }
    }

    /// The issuer identifier (`http://127.0.0.1:<port>`, or `https://`).
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint, as its metadata names it.
    #[must_use]
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
