//! An in-process sandbox of the four token systems tokenwarden speaks — BOIPA, Torus, Sipay and
//! the Payments API — on an ephemeral loopback port, for examples, integration tests and
//! benchmarks. No network, no credentials: the sandbox's own are in [`credentials`], and
//! [`Sandbox::boipa_config`] and friends hand out ready configurations.
//!
//! - **Issuers** at the paths the real ones use, below one prefix per gateway
//!   ([`Sandbox::base_url`]): they check credentials as the documents describe and answer in
//!   the documents' formats, with tokens of a configurable lifetime (JWTs with an `exp` where
//!   the real gateway sends one).
//! - **A protected API** at `{base_url}/api/…` ([`Sandbox::api_url`]): 200 for a valid token
//!   presented the gateway's way, 401 with `WWW-Authenticate: Bearer error="invalid_token"`
//!   for an expired, revoked, unknown or (BOIPA) already-used one.
//! - **Faults on demand** ([`Sandbox::inject`]): a slow issuer, 5xx, a malformed body, rejected
//!   credentials.
//! - **Counters** ([`Sandbox::stats`]): token requests, API requests, 401s, per gateway.
//! - **A payment-grade OAuth 2.0 mode**, apart from the four gateways: a client-credentials
//!   token endpoint ([`Sandbox::oauth2_token_url`]) for clients registered with the public
//!   key of their `private_key_jwt` assertions ([`Sandbox::register_client`], RFC 7523),
//!   issuing tokens bound to the key of the request's DPoP proof (RFC 9449); an API
//!   ([`Sandbox::oauth2_api_url`]) that takes such a token only with a proof of its key on
//!   every request; one server nonce for both, answered `use_dpop_nonce` until a proof
//!   carries it ([`Sandbox::rotate_dpop_nonce`]); its own counters
//!   ([`Sandbox::oauth2_stats`]).
//!
//! ```
//! use tokenwarden_sandbox::{Gateway, Sandbox};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let sandbox = Sandbox::start().await?;
//! let issuer = sandbox.base_url(Gateway::Sipay); // pass it to SipayConfig::new
//! assert!(issuer.starts_with("http://127.0.0.1:"));
//! assert_eq!(sandbox.stats(Gateway::Sipay).token_requests, 0);
//! # Ok(())
//! # }
//! ```
//!
//! The OAuth 2.0 mode, with tokenwarden's DPoP support:
//!
//! ```
//! use tokenwarden_gateways::IssuerClient;
//! use tokenwarden_gateways::dpop::DpopKey;
//! use tokenwarden_gateways::jose::{Algorithm, SigningKey};
//! use tokenwarden_gateways::oauth2::{self, ClientCredentials};
//! use tokenwarden_sandbox::Sandbox;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = Sandbox::start().await?;
//! let pem = "-----BEGIN PRIVATE KEY-----
//! MC4CAQAwBQYDK2VwBCIEIOrTORKle55btjfo2wJFwWGG+IsVt2aJqSBnpOJPk1pr
//! -----END PRIVATE KEY-----";
//! // One key signs both the client's assertions and its DPoP proofs here; two is usual.
//! let key = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, pem)?.with_key_id("k1");
//! sandbox.register_client("payments-client", key.public_jwk());
//! let credentials = ClientCredentials::private_key_jwt(
//!     IssuerClient::new()?,
//!     &sandbox.oauth2_token_url(),
//!     "payments-client",
//!     key.clone(),
//! )?
//! .with_dpop(DpopKey::new(key));
//! let cache = oauth2::cache(credentials).build()?;
//! let token = cache.get().await?;
//! assert!(token.is_dpop());
//! // The first token request was asked for the nonce, the second got the token.
//! assert_eq!(sandbox.oauth2_stats().token_requests, 2);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod fapi;
mod issuers;
mod jws;
mod proof;
mod server;

pub use fapi::OAuth2Stats;
pub use server::{Fault, Gateway, GatewayStats, Sandbox, SandboxConfig, credentials};
