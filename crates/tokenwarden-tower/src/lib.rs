//! A tower layer that puts a [`TokenCache`](tokenwarden_core::TokenCache)'s token on every
//! request and, when the API still answers that the token was rejected, invalidates exactly
//! that token, gets a fresh one and replays the request, once, without the caller noticing.
//!
//! - Every request gets the headers of one token snapshot (values prebuilt, marked sensitive);
//!   headers the caller set are kept.
//! - **401 → refresh → replay once.** By default a `401` counts unless its `WWW-Authenticate`
//!   challenge names an error a fresh token cannot fix (`insufficient_scope`,
//!   `invalid_request`); `403` only if enabled; a custom
//!   [`Classifier`](tokenwarden_core::Classifier) can look at the body. If the replay is
//!   rejected too, that response goes to the caller: no loop, and the cache's backoff keeps an
//!   API that rejects every token from making it hammer the issuer.
//! - **Bodies.** The request body is copied aside *as it is sent*, up to
//!   [`with_max_replay_body`](TokenLayer::with_max_replay_body) (64 KiB by default: typical API
//!   bodies fit, and a thousand requests in flight keep at most 64 MiB). A larger body, or one
//!   the server answered before reading to its end, is still sent once; its rejection still
//!   invalidates the token so the next request succeeds, and the caller gets the rejection with
//!   a [`Replay::NotReplayed`](tokenwarden_core::Replay) response extension. Method, URI,
//!   headers, version and extensions are kept exactly on replay.
//! - **Readiness.** The replay uses a clone of the inner service driven to ready, as tower's
//!   retry does.
//! - **Opt-out** per request with the [`SkipToken`](tokenwarden_core::SkipToken) extension.
//! - **Transport.** Tokens go on `https` requests, relative URIs and plain `http` to loopback;
//!   plain `http` elsewhere fails with
//!   [`InsecureTransport`](tokenwarden_core::InsecureTransport) unless
//!   [`with_insecure_http`](TokenLayer::with_insecure_http) allows it.
//!
//! Errors are [`tower::BoxError`]s: the inner service's, or a
//! [`tokenwarden_core::Error`] / [`InsecureTransport`](tokenwarden_core::InsecureTransport)
//! to downcast to.
//!
//! # Redirects
//!
//! Generic redirect followers strip `Authorization` on a redirect to another host, but not
//! custom token headers such as `Token` or `Merchant-Account`. Put the redirect follower
//! *outside* this layer and restrict the layer to your API with
//! [`with_origin`](TokenLayer::with_origin): a redirected request to another host then passes
//! through the layer with no token on it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tokenwarden_core::{FetchError, Token, TokenCache};
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
//! let client = ServiceBuilder::new().layer(TokenLayer::new(cache)).service(client);
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

pub use body::RequestBody;

/// The response body the caller receives: the inner service's body, after any frames read to
/// classify the response.
pub type ResponseBody<B> = tokenwarden_core::PrefixedBody<B>;
pub use layer::TokenLayer;
pub use service::TokenService;
