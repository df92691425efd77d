//! reqwest clients under the token middleware (the `reqwest` feature).

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokenwarden_core::TokenCache;
use tokenwarden_origin::Scope;
use tokenwarden_reqwest::TokenMiddleware;

/// `http` under a [`TokenMiddleware`] with `cache`, scoped to `origin`.
///
/// # Panics
///
/// If `origin` is not an origin.
#[must_use]
pub fn with_middleware(
    http: reqwest::Client,
    cache: TokenCache,
    origin: &str,
) -> ClientWithMiddleware {
    let scope = Scope::origin(origin).expect("an origin");
    ClientBuilder::new(http)
        .with(TokenMiddleware::new(cache, scope))
        .build()
}

/// A client from [`tokenwarden_reqwest::client_builder`] (which follows no redirect that
/// leaves the origin) under a [`TokenMiddleware`] with `cache`, scoped to `origin`.
///
/// # Panics
///
/// If `origin` is not an origin, or the client cannot be built.
#[must_use]
pub fn middleware_client(cache: TokenCache, origin: &str) -> ClientWithMiddleware {
    let http = tokenwarden_reqwest::client_builder()
        .build()
        .expect("a reqwest client");
    with_middleware(http, cache, origin)
}
