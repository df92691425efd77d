//! `cargo run --example hyper_client --features tower`
//!
//! A hyper-util client with the `TokenLayer`, against a small API started on loopback by this
//! example: every request carries the token, and when the API forgets the token the request is
//! replayed with a fresh one without the caller seeing the 401.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenwarden::tower::{RequestBody, TokenLayer};
use tokenwarden::{FetchError, Replay, Token, TokenCache};
use tower::{ServiceBuilder, ServiceExt};

/// The API's idea of which tokens are valid.
type Valid = Arc<Mutex<HashSet<String>>>;

async fn start_api(valid: Valid) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let valid = Arc::clone(&valid);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let valid = Arc::clone(&valid);
                        async move {
                            let token = request
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .unwrap_or("")
                                .to_owned();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let ok = valid.lock().unwrap().contains(&token);
                            let mut response =
                                Response::new(Full::new(if ok { body } else { Bytes::new() }));
                            if !ok {
                                *response.status_mut() = StatusCode::UNAUTHORIZED;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let valid = Valid::default();
    let addr = start_api(Arc::clone(&valid)).await;

    // The token source: here it mints tokens the API accepts; in real code it calls the issuer.
    let minted = Arc::new(AtomicUsize::new(0));
    let source = {
        let (valid, minted) = (Arc::clone(&valid), Arc::clone(&minted));
        move || {
            let (valid, minted) = (Arc::clone(&valid), Arc::clone(&minted));
            async move {
                let token = format!("token-{}", minted.fetch_add(1, Relaxed) + 1);
                valid.lock().unwrap().insert(token.clone());
                Ok::<_, FetchError>(Token::new(token).with_expires_in(Duration::from_secs(900)))
            }
        }
    };
    let cache = TokenCache::new(source);

    // The one line that matters: the layer goes on the client.
    let client = Client::builder(TokioExecutor::new()).build_http::<RequestBody<Full<Bytes>>>();
    let api: http::Uri = format!("http://{addr}").parse()?;
    let client = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone()).with_origin(&api))
        .service(client);

    let post = |body: &'static str| {
        Request::post(format!("http://{addr}/v1/orders"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
    };

    let response = client.clone().oneshot(post(r#"{"order":1}"#)?).await?;
    println!(
        "first request:  {} (token fetched: {})",
        response.status(),
        minted.load(Relaxed)
    );

    valid.lock().unwrap().clear();
    println!("the API forgets every token...");
    let response = client.clone().oneshot(post(r#"{"order":2}"#)?).await?;
    let replayed = matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    );
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "second request: {status}, body echoed {:?}, replayed after a 401: {replayed}, tokens fetched: {}",
        String::from_utf8_lossy(&body),
        minted.load(Relaxed)
    );
    assert_eq!(status, StatusCode::OK);
    assert!(replayed);
    println!("{:?}", cache.stats());
    Ok(())
}
