//! A [`reqwest_middleware`] middleware that puts a
//! [`TokenCache`](tokenwarden_core::TokenCache)'s token on every request and, when the API
//! still answers that the token was rejected, invalidates exactly that token, gets a fresh one
//! and replays the request, once, without the caller noticing — the same rules as the tower
//! layer, decided by the same code in `tokenwarden-core`.
//!
//! - Every request gets the headers of one token snapshot; headers the caller set are kept.
//! - **401 → refresh → replay once**, with the default or a custom
//!   [`Classifier`](tokenwarden_core::Classifier) (`WWW-Authenticate` parsed; `403` opt-in; the
//!   body can be inspected). A rejected replay reaches the caller: no loop.
//! - **Bodies.** A request whose body cannot be cloned (`Request::try_clone` returns `None`,
//!   e.g. a stream) is **still sent**, once — never refused before sending. Its rejection still
//!   invalidates the token so the next request succeeds, and the caller gets the 401 with a
//!   [`Replay::NotReplayed`](tokenwarden_core::Replay) response extension. In-memory bodies
//!   are cloned by reference count, so no size cap applies to them.
//! - **Opt-out** per request: `.with_extension(SkipToken)`.
//! - **Transport.** Tokens go on `https` and on plain `http` to loopback; plain `http`
//!   elsewhere fails with [`InsecureTransport`](tokenwarden_core::InsecureTransport) unless
//!   allowed.
//!
//! Errors are `reqwest_middleware::Error::Middleware` wrapping a
//! [`tokenwarden_core::Error`] or an [`InsecureTransport`](tokenwarden_core::InsecureTransport)
//! (downcast the `anyhow::Error`), or the client's own `reqwest::Error`s.
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
//! use tokenwarden_reqwest::TokenMiddleware;
//!
//! let cache = TokenCache::new(|| async {
//!     Ok::<_, FetchError>(Token::new("t0k3n").with_expires_in(Duration::from_secs(900)))
//! });
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(TracingMiddleware::default())
//!     .with(RetryTransientMiddleware::new_with_policy(
//!         ExponentialBackoff::builder().build_with_max_retries(3),
//!     ))
//!     .with(TokenMiddleware::new(cache))
//!     .build();
//! # let _ = client;
//! ```
//!
//! Redirects: reqwest's redirect policy strips `Authorization` on a redirect to another host
//! but not custom headers such as `Token` or `Merchant-Account`, and redirects happen inside
//! the client, below any middleware. With such headers, restrict redirects
//! (`reqwest::redirect::Policy::none()` or a custom policy) or keep the API on one host.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod middleware;

pub use middleware::TokenMiddleware;
pub use tokenwarden_core::SkipToken;
