//! The core of tokenwarden: a token cache that fetches once, shares with every task, renews
//! ahead of expiry and coalesces invalidations, with a hot path that takes no lock and writes
//! nothing shared (measured in
//! [docs/benchmarks.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/benchmarks.md)).
//!
//! This crate knows nothing of tower or reqwest: `tokenwarden-http` decides, per request,
//! where a [`Snapshot`] goes and what a rejection means, and the layers in `tokenwarden-tower`
//! and `tokenwarden-reqwest` adapt it to their request and response types.
//!
//! - [`TokenSource`]: fetches a fresh token (a struct or a closure).
//! - [`Token`]: the secret value, its expiry, metadata; never printed.
//! - [`Presentation`]: which headers carry the token, built once per token.
//! - [`TokenCache`]: the shared cache; the rules it keeps are written out in
//!   [docs/guarantees.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md).
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

mod budget;
mod cache;
mod config;
pub mod dpop;
mod error;
pub mod metrics;
mod presentation;
mod secret;
mod snapshot;
mod source;
mod stats;
pub mod store;
mod token;

pub use budget::RefreshBudget;
pub use cache::{
    CacheState, CacheStatus, Clock, HeldOff, Invalidation, KeyHandle, KeyedCache,
    KeyedCacheBuilder, KeyedSummary, ManualClock, Route, TokenCache, TokenCacheBuilder, future,
};
pub(crate) use config::{CacheConfig, RefreshWindow};
pub use dpop::DpopProver;
pub use error::{ConfigError, Error, TokenProblem};
pub use presentation::{Presentation, TokenCharset};
pub use secret::Secret;
pub use snapshot::Snapshot;
pub use source::{BoxError, FetchError, Probe, TokenSource};
pub use stats::CacheStats;
pub use store::{MemoryStore, SharedTokens, TokenStore};
pub use token::{Expiry, Token, TokenId};
