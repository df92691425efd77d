//! A [`reqwest_middleware`] middleware that puts a
//! [`TokenCache`](tokenwarden_core::TokenCache)'s token on every request and, when the API
//! still answers that the token was rejected, invalidates exactly that token, gets a fresh one
//! and replays the request, once, without the caller noticing — the same rules as the tower
//! layer, decided by the same engine (`tokenwarden-http`): this crate only adapts reqwest's
//! request and response types to it.
//!
//! - Every request gets the headers of one token snapshot; headers the caller set are kept.
//! - **401 → refresh → replay once**, with the default or a custom
//!   [`Classifier`] (`WWW-Authenticate` parsed; `403` opt-in; the
//!   body can be inspected). A rejected replay reaches the caller: no loop.
//! - **Bodies.** In-memory bodies are kept for a replay by reference count; a stream is
//!   copied aside *as it is sent*, up to the replay cap
//!   ([`with_max_replay_body`](tokenwarden_http::LayerPolicy::with_max_replay_body), 64 KiB by default), as
//!   the tower layer does. A larger body is **still sent**, once — never refused before
//!   sending; its rejection still invalidates the token so the next request succeeds, and the
//!   caller gets the rejection with a
//!   [`Replay::NotReplayed`](tokenwarden_http::Replay) response extension.
//! - **Before anything is fetched**, a request carrying the caller's own credentials (every
//!   header the token would go in) goes untouched: no token is fetched for it.
//! - **Inspection** of a body a classifier asks for is bounded in bytes and in time
//!   ([`with_inspect_timeout`](tokenwarden_http::LayerPolicy::with_inspect_timeout), 1 s); the response keeps
//!   its URL and everything else it had.
//! - **Scope: fails closed.** A middleware is made for the origins it may send tokens to
//!   ([`Scope`](tokenwarden_origin::Scope)); requests anywhere else go through untouched. Every
//!   origin is a named opt-in, [`Scope::any_origin`](tokenwarden_origin::Scope::any_origin).
//! - **Opt-out** per request: `.with_extension(SkipToken)`.
//! - **Transport.** In scope, tokens go on `https`, and on plain `http` only to loopback;
//!   elsewhere the request fails, unsent, with
//!   [`InsecureTransport`](tokenwarden_origin::InsecureTransport) unless allowed.
//! - **Redirects** (below): build the client with [`client_builder`]; a response that arrives
//!   from outside the scope anyway is an error ([`LeftScope`]), never a silent success.
//! - **TLS.** With feature `rustls` (on by default) reqwest speaks `https` out of the box. If
//!   reqwest has no TLS backend at all (this feature off and none turned on elsewhere), an
//!   `https` request in scope fails with [`TlsMissing`], unsent and without fetching a token,
//!   instead of as a connection error that retry middleware would retry.
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
//! reqwest follows redirects inside the client, *below* every middleware, so no middleware can
//! take token headers off a hop; and reqwest's default policy strips `Authorization` and
//! cookies on a cross-host hop but not custom headers (`Token`, `Merchant-Account`), and
//! follows `https` → `http`. Therefore:
//!
//! - Build the client with [`client_builder`] (or set [`redirect_policy`] on your builder):
//!   it follows redirects within the origin a request went to and stops at any other, handing
//!   you the `3xx` — nothing is sent to the other host. `redirect::Policy::none()` is safe too.
//! - If you bring a client with reqwest's default policy anyway, a response whose *final* URL
//!   is outside the scope (or plain text off loopback) fails with [`LeftScope`] instead of
//!   passing as a success. By then the token headers may have reached that host: treat the
//!   error as an incident, and fix the client. A chain that leaves and comes back ends in
//!   scope and cannot be seen from a middleware: only the redirect policy prevents it.
//!
//! reqwest also sends plain-`http` requests, loopback included, through a proxy named by
//! `HTTP_PROXY`/`ALL_PROXY`; where one is set, set `NO_PROXY=localhost,127.0.0.1,::1` too.
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
