//! tokenwarden takes session and access tokens off the hands of HTTP-client code: tokens are
//! fetched once, shared by every task, renewed before they expire, and a request the API
//! rejects with 401 is replayed with a fresh token.
//!
//! This crate re-exports the workspace's crates:
//!
//! - [`core`] (always): the token cache, token sources, presentations and errors.
//! - [`http`] (always): what both HTTP layers decide per request — scopes in use, the
//!   classifier, replay markers, the opt-out — and the engine they share.
//! - [`tower`] (feature `tower`): the tower layer for hyper-util clients and any tower
//!   service taking `http` requests.
//! - [`reqwest`] (feature `reqwest`): the `reqwest-middleware` middleware.
//! - [`gateways`] (feature `gateways`): token sources for BOIPA, Torus, Sipay, the Payments API
//!   and generic JSON issuers.
//! - [`sandbox`] (feature `sandbox`): an in-process sandbox of those gateways, for tests.
//!
//! Feature `metrics` records what the cache and the layers do through the `metrics` facade
//! (names in [`core::metrics`] and [`http::metrics`]). Feature `rustls` (on by default) gives
//! the reqwest clients tokenwarden builds (the gateways' `IssuerClient`, the middleware's
//! `client_builder()`) TLS; every feature, and what happens without TLS in reqwest:
//! [docs/features.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/features.md).
//!
//! ```
//! use std::time::Duration;
//! use tokenwarden::{FetchError, Token, TokenCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tokenwarden::Error> {
//! let cache = TokenCache::new(|| async {
//!     Ok::<_, FetchError>(Token::new("abc").with_expires_in(Duration::from_secs(900)))
//! });
//! let snapshot = cache.get().await?;
//! assert_eq!(snapshot.token().secret().expose(), "abc");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub use tokenwarden_core as core;
pub use tokenwarden_core::{
    CacheState, CacheStats, CacheStatus, ConfigError, Error, Expiry, FetchError, HeldOff,
    Invalidation, KeyHandle, KeyedCache, KeyedCacheBuilder, KeyedSummary, MemoryStore,
    Presentation, Probe, RefreshBudget, Route, Secret, SharedTokens, Snapshot, Token, TokenCache,
    TokenCacheBuilder, TokenCharset, TokenId, TokenProblem, TokenSource, TokenStore,
};
#[cfg(feature = "gateways")]
pub use tokenwarden_gateways as gateways;
pub use tokenwarden_http as http;
pub use tokenwarden_http::{
    Classifier, DefaultClassifier, KeyError, LayerPolicy, NotReplayed, Replay, SkipToken, TokenKey,
    Verdict,
};
pub use tokenwarden_origin as origin;
pub use tokenwarden_origin::{InsecureTransport, Origin, Scope};
#[cfg(feature = "redis")]
pub use tokenwarden_redis as redis;
#[cfg(feature = "reqwest")]
pub use tokenwarden_reqwest as reqwest;
#[cfg(feature = "sandbox")]
pub use tokenwarden_sandbox as sandbox;
#[cfg(feature = "tower")]
pub use tokenwarden_tower as tower;

// The examples of the README and of docs/ use every feature: they are tested with
// `--all-features`.
#[cfg(all(doctest, feature = "tower", feature = "reqwest", feature = "sandbox"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(all(
    doctest,
    feature = "tower",
    feature = "reqwest",
    feature = "sandbox",
    feature = "redis",
    feature = "metrics"
))]
mod docs {
    macro_rules! pages {
        ($($name:ident = $file:literal),* $(,)?) => {
            $(#[doc = include_str!(concat!("../docs/", $file))] struct $name;)*
        };
    }
    pages!(
        Design = "design.md",
        Cache = "cache.md",
        Tower = "tower.md",
        Reqwest = "reqwest.md",
        Gateways = "gateways.md",
        OAuth2 = "oauth2.md",
        Keyed = "keyed.md",
        Replicas = "replicas.md",
        Sandbox = "sandbox.md",
        Security = "security.md",
        Guarantees = "guarantees.md",
        Benchmarks = "benchmarks.md",
        Metrics = "metrics.md",
        Features = "features.md",
    );
}
