//! A tower layer that puts a [`TokenCache`](tokenwarden_core::TokenCache)'s token on every
//! request and, when the API still answers that the token was rejected, invalidates exactly
//! that token, gets a fresh one and replays the request, once, without the caller noticing.
//!
//! The decisions are the engine's (`tokenwarden-http`), shared with the reqwest middleware;
//! this crate adapts tower's request, response and body types to it: [`TokenLayer`],
//! [`TokenService`] and the [`future`] module, laid out as tower-http's layers are. The rules
//! the layer keeps — which requests get a token and which go untouched, which responses count
//! as rejections (the default rule, or a custom [`Classifier`]), what is replayed, how bodies
//! are kept and inspected — are written out in [docs/tower.md]; where tokens may go (the
//! [`Scope`](tokenwarden_origin::Scope), plain `http`, redirects) in [docs/security.md].
//!
//! - **Bodies.** By default ([`Tee`]) the request body is copied aside *as it is sent*, up to
//!   [`with_max_replay_body`](tokenwarden_http::LayerPolicy::with_max_replay_body), and the
//!   inner service takes [`RequestBody<B>`]. With [`cloning_bodies`](TokenLayer::cloning_bodies)
//!   ([`CloneBody`]) a body that is cheap to clone (`Full<Bytes>`) is cloned instead, and the
//!   inner service keeps the caller's body type. A body-less request keeps nothing. Method,
//!   URI, headers, version and extensions are kept exactly on replay. What happens to a body
//!   over the cap: [docs/tower.md].
//! - **Readiness.** The replay uses a clone of the inner service driven to ready, as tower's
//!   retry does.
//! - **Opt-out** per request with the [`SkipToken`] extension.
//! - A request in scope that may not carry a token (plain `http` off loopback) fails with
//!   [`InsecureTransport`](tokenwarden_origin::InsecureTransport), unsent, unless
//!   [`with_insecure_http`](tokenwarden_http::LayerPolicy::with_insecure_http) allows it.
//!
//! Errors are [`tower::BoxError`]s: the inner service's, or a
//! [`tokenwarden_core::Error`] / [`InsecureTransport`](tokenwarden_origin::InsecureTransport)
//! to downcast to.
//!
//! # Redirects
//!
//! hyper-util's client follows no redirect. If you add tower-http's `FollowRedirect`, put it
//! **outside** this layer (`ServiceBuilder::new().layer(FollowRedirectLayer::new())
//! .layer(token_layer)`), never inside it; why: [docs/security.md] ("Redirects, per client").
//!
//! [docs/tower.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/tower.md
//! [docs/security.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/security.md
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tokenwarden_core::{FetchError, Token, TokenCache};
//! use tokenwarden_origin::Scope;
//! use tokenwarden_tower::TokenLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let cache = TokenCache::new(|| async {
//!     Ok::<_, FetchError>(Token::new("t0k3n").with_expires_in(Duration::from_secs(900)))
//! });
//! // Any tower service taking http requests: here a stand-in for hyper-util's client.
//! let client = tower::service_fn(|request: Request<_>| async move {
//!     let status = match request.headers().get("authorization") {
//!         Some(v) if v == "Bearer t0k3n" => StatusCode::OK,
//!         _ => StatusCode::UNAUTHORIZED,
//!     };
//!     let mut response = Response::new(Full::new(Bytes::new()));
//!     *response.status_mut() = status;
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//! let scope = Scope::origin("https://api.example.com")?;
//! let client = ServiceBuilder::new().layer(TokenLayer::new(cache, scope)).service(client);
//!
//! let response = client
//!     .oneshot(Request::get("https://api.example.com/v1/orders").body(Full::new(Bytes::new()))?)
//!     .await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod body;
pub mod future;
mod layer;
mod service;

pub use body::{CloneBody, KeepBody, Tee};
pub use layer::TokenLayer;
pub use service::TokenService;
pub use tokenwarden_http::{
    Classifier, DefaultClassifier, KeyError, LayerPolicy, NotReplayed, Replay, RequestBody,
    RequestView, ResponseBody, SkipToken, TokenKey, Verdict,
};
