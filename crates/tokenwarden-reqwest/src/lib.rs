//! A [`reqwest_middleware`] middleware that puts a
//! [`TokenCache`](tokenwarden_core::TokenCache)'s token on every request and, when the API
//! still answers that the token was rejected, invalidates exactly that token, gets a fresh one
//! and replays the request, once, without the caller noticing — the same rules as the tower
//! layer, decided by the same engine (`tokenwarden-http`): this crate only adapts reqwest's
//! request and response types to it. The rules — which requests get a token and which go
//! untouched, which responses count as rejections (the default rule, or a custom
//! [`Classifier`]), what is replayed, how bodies are kept and inspected — are written out in
//! [docs/tower.md]; what is particular to reqwest in [docs/reqwest.md]; where tokens may go
//! (the [`Scope`](tokenwarden_origin::Scope), plain `http`, redirects, proxies) in
//! [docs/security.md].
//!
//! - **Bodies.** In-memory bodies are kept for a replay by reference count; a stream is
//!   copied aside *as it is sent*, up to the replay cap
//!   ([`with_max_replay_body`](tokenwarden_http::LayerPolicy::with_max_replay_body)), as the
//!   tower layer does.
//! - **Opt-out** per request: `.with_extension(SkipToken)`.
//! - A request in scope that may not carry a token (plain `http` off loopback) fails, unsent,
//!   with [`InsecureTransport`](tokenwarden_origin::InsecureTransport) unless allowed.
//! - **TLS.** Without any TLS backend in reqwest, an `https` request in scope fails with
//!   [`TlsMissing`], unsent and without fetching a token (see [docs/features.md]).
//!
//! Errors are `reqwest_middleware::Error::Middleware` wrapping a
//! [`tokenwarden_core::Error`], an [`InsecureTransport`](tokenwarden_origin::InsecureTransport),
//! a [`LeftScope`] or a [`TlsMissing`] (downcast the `anyhow::Error`), or the client's own `reqwest::Error`s.
//! Each keeps its causes as sources and prints each message once when the chain is walked.
//!
//! # Where it goes in a chain
//!
//! Put it **after** (inside) `reqwest-retry`'s `RetryTransientMiddleware`, so every retry
//! attempt passes through it and carries the current token, and after `reqwest-tracing`'s
//! `TracingMiddleware` if you want one span per logical request (before it, for a span per
//! attempt including replays):
//!
//! ```
//! use std::time::Duration;
//! use reqwest_middleware::ClientBuilder;
//! use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
//! use reqwest_tracing::TracingMiddleware;
//! use tokenwarden_core::{FetchError, Token, TokenCache};
//! use tokenwarden_origin::Scope;
//! use tokenwarden_reqwest::TokenMiddleware;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = TokenCache::new(|| async {
//!     Ok::<_, FetchError>(Token::new("t0k3n").with_expires_in(Duration::from_secs(900)))
//! });
//! let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build()?)
//!     .with(TracingMiddleware::default())
//!     .with(RetryTransientMiddleware::new_with_policy(
//!         ExponentialBackoff::builder().build_with_max_retries(3),
//!     ))
//!     .with(TokenMiddleware::new(cache, Scope::origin("https://api.example.com")?))
//!     .build();
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! # Redirects
//!
//! reqwest follows redirects inside the client, below every middleware: build the client with
//! [`client_builder`] (or set [`redirect_policy`] on your builder). Why, and what [`LeftScope`]
//! catches when a client with reqwest's default policy is used anyway: [docs/security.md]
//! ("Redirects, per client"); loopback requests and `HTTP_PROXY`: the same page ("Plain
//! text").
//!
//! [docs/tower.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/tower.md
//! [docs/reqwest.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/reqwest.md
//! [docs/security.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/security.md
//! [docs/features.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/features.md
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod middleware;
mod redirect;
mod tls;

pub use middleware::TokenMiddleware;
pub use redirect::{LeftScope, MAX_REDIRECTS, client_builder, redirect_policy};
pub use tls::TlsMissing;
pub use tokenwarden_http::{
    Classifier, DefaultClassifier, KeyError, LayerPolicy, NotReplayed, Replay, RequestView,
    ResponseBody, SkipToken, TokenKey, Verdict,
};
