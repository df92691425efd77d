//! `cargo run --example reqwest_client --features reqwest`
//!
//! A `reqwest_middleware` client with the `TokenMiddleware`, against a mock token issuer and API
//! on loopback: the token is fetched once and put on every request; when the API stops accepting
//! it, the request is replayed with a fresh token without the caller seeing the 401.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use reqwest_middleware::ClientBuilder;
use tokenwarden::reqwest::TokenMiddleware;
use tokenwarden::{FetchError, Replay, Token, TokenCache};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = mockito::Server::new_async().await;
    let minted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&minted);
    let _issuer = server
        .mock("POST", "/token")
        .with_body_from_request(move |_| {
            format!("token-{}", counter.fetch_add(1, Relaxed) + 1).into_bytes()
        })
        .create_async()
        .await;
    // token-1 is accepted once, then the API forgets it; token-2 is accepted.
    let _first = server
        .mock("POST", "/v1/orders")
        .match_header("authorization", "Bearer token-1")
        .with_body("accepted with token-1")
        .expect(1)
        .create_async()
        .await;
    let _forgotten = server
        .mock("POST", "/v1/orders")
        .match_header("authorization", "Bearer token-1")
        .with_status(401)
        .with_header("www-authenticate", r#"Bearer error="invalid_token""#)
        .create_async()
        .await;
    let _fresh = server
        .mock("POST", "/v1/orders")
        .match_header("authorization", "Bearer token-2")
        .with_body("accepted with token-2")
        .create_async()
        .await;

    // The token source: a call to the issuer.
    let issuer = format!("{}/token", server.url());
    let http = reqwest::Client::new();
    let cache = TokenCache::new(move || {
        let (http, issuer) = (http.clone(), issuer.clone());
        async move {
            let response = http
                .post(issuer)
                .send()
                .await
                .map_err(FetchError::transient)?;
            let token = response.text().await.map_err(FetchError::transient)?;
            Ok(Token::new(token).with_expires_in(Duration::from_secs(900)))
        }
    });

    // The one line that matters: the middleware goes on the client.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(cache.clone()))
        .build();

    let url = format!("{}/v1/orders", server.url());
    for attempt in 1..=2 {
        let response = client.post(&url).body(r#"{"order":1}"#).send().await?;
        let replayed = matches!(
            response.extensions().get::<Replay>(),
            Some(Replay::Replayed { .. })
        );
        let status = response.status();
        let body = response.text().await?;
        println!("request {attempt}: {status} {body:?} (replayed after a 401: {replayed})");
        assert!(status.is_success());
    }
    println!("tokens fetched: {}", minted.load(Relaxed));
    assert_eq!(minted.load(Relaxed), 2);
    println!("{:?}", cache.stats());
    Ok(())
}
