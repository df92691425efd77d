//! The core of tokenwarden: a token cache that fetches once, shares with every task, renews
//! ahead of expiry and coalesces invalidations, with a hot path that costs a few nanoseconds.
//!
//! This crate knows nothing of tower or reqwest; the layers in `tokenwarden-tower` and
//! `tokenwarden-reqwest` put its [`Snapshot`]s on requests.
//!
//! - [`TokenSource`]: fetches a fresh token (a struct or a closure).
//! - [`Token`]: the secret value, its expiry, metadata; never printed.
//! - [`Presentation`]: which headers carry the token, built once per token.
//! - [`TokenCache`]: the shared cache. See its docs for every rule it keeps.
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderName;
//! use tokenwarden_core::{FetchError, Presentation, Token, TokenCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = TokenCache::builder(|| async {
//!     Ok::<_, FetchError>(Token::new("t0k3n").with_expires_in(Duration::from_secs(3600)))
//! })
//! .with_presentation(Presentation::header(HeaderName::from_static("token")))
//! .build()?;
//!
//! let mut headers = http::HeaderMap::new();
//! cache.get().await?.apply_to(&mut headers);
//! assert_eq!(headers["token"], "t0k3n");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod body;
mod cache;
mod config;
mod error;
mod origin;
mod policy;
mod presentation;
mod secret;
mod snapshot;
mod source;
mod stats;
mod token;

pub use body::{DRAIN_LIMIT, DRAIN_TIME, PrefixedBody, drain};
pub use cache::{
    CacheState, CacheStatus, Clock, ManualClock, TokenCache, TokenCacheBuilder, future,
};
pub use config::{CacheConfig, RefreshWindow};
pub use error::{ConfigError, Error};
pub use origin::{
    InsecureTransport, Origin, RedactedUri, Scope, check_transport, is_loopback, redact_url,
    transport_allowed,
};
pub use policy::{
    Classifier, DEFAULT_MAX_REPLAY_BODY, DefaultClassifier, LayerPolicy, NotReplayed, Replay,
    SkipToken, Verdict, challenge_allows_refresh, challenge_errors, record_acceptance,
};
pub use presentation::{Presentation, TokenCharset, TokenProblem};
pub use secret::Secret;
pub use snapshot::Snapshot;
pub use source::{BoxError, FetchError, TokenSource};
pub use stats::CacheStats;
pub use token::{Expiry, Token, TokenId};
