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
//! Every documented failure and every malformed answer becomes a [`GatewayError`] naming the
//! gateway, the HTTP status and the gateway's own codes, and saying whether retrying can help
//! (the cache backs off on retryable ones and holds off on the others). Credentials are held
//! as [`Secret`](tokenwarden_core::Secret)s and never printed. Token responses are read up to
//! [`DEFAULT_MAX_RESPONSE`] (64 KiB), never more.
//!
//! # The HTTP call to the issuer
//!
//! Sources send their one request through [`HttpSend`], a small trait on `http` types, rather
//! than through a client chosen here: with feature `reqwest`, [`IssuerClient`] (reqwest with
//! redirects off and timeouts); with feature `tower`, [`ServiceSender`] adapts any tower
//! service (such as hyper-util's client); closures implement it too. A hyper-only application
//! therefore never compiles reqwest, and a test can answer with anything.
//!
//! Feature `rustls` (on by default) gives [`IssuerClient`] TLS: reqwest's own default, rustls.
//! Where reqwest has no TLS backend at all (this feature off, and none turned on elsewhere), an
//! `https` issuer URL is refused when a source is built, with a `ConfigError` naming the
//! feature — never a fetch that fails as "could not be reached" for ever.
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
//! - **Never along a redirect.** A `3xx` from a token endpoint is an error,
//!   [`GatewayError::Redirected`], naming only the target's origin; nothing is sent again.
//!   [`IssuerClient`] follows none; a tower service must not be wrapped in a follower.
//! - **Never in clear text off loopback.** An issuer URL on plain `http` to a host that is not
//!   loopback is refused when the source is built, unless the sender is wrapped in
//!   [`InsecureHttp`].
//! - **Never in text.** Every configured URL prints with its credentials (`user:pass@`) and
//!   query values redacted, in `Debug`, errors and logs. An issuer that echoes a credential it
//!   was sent (a client secret in its `error_description`, a password in a refusal) does not
//!   get it into an error either: each source takes every credential it sends out of any text
//!   built from the answer, replaced by `[redacted]`, before the error leaves it.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod boipa;
mod config;
mod error;
pub mod generic;
mod http;
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
