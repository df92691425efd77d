//! Token sources for the gateways tokenwarden speaks, each a
//! [`TokenSource`](tokenwarden_core::TokenSource) with the presentation it needs:
//!
//! | module | issuer | token | presented as |
//! |---|---|---|---|
//! | [`boipa`] | `POST {base}/token`, form | single-use, per action | `Token: <token>` |
//! | [`torus`] | `POST …/session/generate`, JSON + `Token` header | configurable TTL (8 h) | `Token: <token>` |
//! | [`sipay`] | `POST {base}/api/token`, JSON | JWT `exp`, else `expires_at` at UTC+3 | `Authorization: Bearer` |
//! | [`payments`] | `POST {base}/session_token` with an authentication token | JWT after `sandbox_`, else 15 min | `Authorization: Bearer` + `Merchant-Account` |
//! | [`generic`] | any JSON/form credentials endpoint | by JSON pointer | any |
//!
//! Every documented failure and every malformed answer becomes a [`GatewayError`] (what it
//! tells, and what the cache does with it: [docs/gateways.md]). Credentials are held as
//! [`Secret`](tokenwarden_core::Secret)s and never printed. Token responses are read up to
//! [`DEFAULT_MAX_RESPONSE`] (64 KiB), never more.
//!
//! # The HTTP call to the issuer
//!
//! Sources send their one request through [`HttpSend`], a small trait on `http` types, rather
//! than through a client chosen here: with feature `reqwest`, [`IssuerClient`] (reqwest with
//! redirects off and timeouts); with feature `tower`, [`ServiceSender`] adapts any tower
//! service (such as hyper-util's client); closures implement it too, so a test can answer
//! with anything. Which client, which TLS, and what happens without TLS in reqwest:
//! [docs/features.md].
//!
//! ```
//! # #[cfg(feature = "reqwest")] {
//! use tokenwarden_gateways::IssuerClient;
//! use tokenwarden_gateways::sipay::{self, SipayConfig};
//!
//! let config = SipayConfig::new(sipay::TEST_BASE_URL, "app-id", "app-secret");
//! let cache = sipay::cache(IssuerClient::new()?, config).build()?;
//! # let _ = cache;
//! # }
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where credentials go
//!
//! Never along a redirect ([`GatewayError::Redirected`]), never in clear text off loopback
//! (unless the sender is wrapped in [`InsecureHttp`]), never in text, even when an issuer
//! echoes one: the rules are written out in [docs/security.md].
//!
//! [docs/gateways.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/gateways.md
//! [docs/security.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/security.md
//! [docs/features.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/features.md
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod boipa;
mod config;
pub mod dpop;
mod error;
pub mod generic;
mod http;
pub mod jose;
pub mod oauth2;
pub mod payments;
mod redact;
pub mod sipay;
pub mod torus;
mod wire;

pub use config::GatewayConfig;
pub use error::{GatewayCode, GatewayError, TransportError};
#[cfg(feature = "reqwest")]
pub use http::IssuerClient;
#[cfg(feature = "tower")]
pub use http::ServiceSender;
pub use http::{
    DEFAULT_MAX_RESPONSE, HttpSend, InsecureHttp, ReadFailed, RedirectFollowed, TooLarge,
};
pub use wire::{jwt_expiry, local_time};
