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
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod issuers;
mod server;

pub use server::{Fault, Gateway, GatewayStats, Sandbox, SandboxConfig, credentials};
