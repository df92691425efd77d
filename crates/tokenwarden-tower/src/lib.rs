//! A tower layer that puts a [`TokenCache`](tokenwarden_core::TokenCache)'s token on every
//! request and, when the API still answers that the token was rejected, invalidates exactly
//! that token, gets a fresh one and replays the request, once, without the caller noticing.
//!
//! The decisions are the engine's (`tokenwarden-http`), shared with the reqwest middleware;
//! this crate adapts tower's request, response and body types to it: [`TokenLayer`],
//! [`TokenService`] and the [`future`] module, laid out as tower-http's layers are.
//!
//! - Every request gets the headers of one token snapshot (values prebuilt, marked sensitive);
//!   headers the caller set are kept.
//! - **401 → refresh → replay once.** By default a `401` counts unless its `WWW-Authenticate`
//!   challenge names an error a fresh token cannot fix (`insufficient_scope`,
//!   `invalid_request`); `403` only if enabled; a custom
//!   [`Classifier`] can look at the body. If the replay is
//!   rejected too, that response goes to the caller: no loop, and the cache's backoff keeps an
//!   API that rejects every token from making it hammer the issuer.
//! - **Bodies.** By default ([`Tee`]) the request body is copied aside *as it is sent*, up to
//!   [`with_max_replay_body`](tokenwarden_http::LayerPolicy::with_max_replay_body) (64 KiB by default: typical API
//!   bodies fit, and a thousand requests in flight keep at most 64 MiB); the inner service
//!   then takes [`RequestBody<B>`]. With [`cloning_bodies`](TokenLayer::cloning_bodies)
//!   ([`CloneBody`]) a body that is cheap to clone (`Full<Bytes>`) is cloned instead, and the
//!   inner service keeps the caller's body type. A body-less request keeps nothing. A larger
//!   body, or one the server answered before reading to its end, is still sent once; its
//!   rejection still invalidates the token so the next request succeeds, and the caller gets
//!   the rejection with a [`Replay::NotReplayed`](tokenwarden_http::Replay) response
//!   extension. Method, URI, headers, version and extensions are kept exactly on replay.
//! - **Before anything is fetched**, a request carrying the caller's own credentials goes
//!   untouched: no token is fetched for it.
//! - **Inspection** of a body a classifier asks for is bounded in bytes and in time
//!   ([`with_inspect_timeout`](tokenwarden_http::LayerPolicy::with_inspect_timeout), 1 s); the rejected body of a
//!   replayed request drains while the fresh token is fetched.
//! - **Bounds.** [`ResponseFuture`](future::ResponseFuture) is `Send` exactly when the inner
//!   service's future is; no `'static` or `Unpin` is asked of the service or its body.
//! - **Readiness.** The replay uses a clone of the inner service driven to ready, as tower's
//!   retry does.
//! - **Scope: fails closed.** A layer is made for the origins it may send tokens to
//!   ([`Scope`](tokenwarden_origin::Scope)); a request anywhere else, or with a relative URI,
//!   goes through untouched. Every origin is a named opt-in,
//!   [`Scope::any_origin`](tokenwarden_origin::Scope::any_origin).
//! - **Opt-out** per request with the [`SkipToken`] extension.
//! - **Transport.** In scope, tokens go on `https` requests, and on plain `http` only to
//!   loopback (no other scheme, `wss` included: an HTTP client would send it in clear text); elsewhere the request fails with
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
//! .layer(token_layer)`): every hop then passes through the layer, which puts the token only
//! on hops to the scope's origins — a redirect to another host, or from `https` to `http`,
//! carries no `Authorization`, `Token`, `Merchant-Account` or any other presentation header.
//! Never put a follower *inside* it: the follower would copy the token headers onto every hop
//! (tower-http strips `Authorization` across hosts, not custom headers), and no layer outside
//! can take them back.
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
