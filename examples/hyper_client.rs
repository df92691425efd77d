//! `cargo run --example hyper_client`
//!
//! A hyper-util client with the `TokenLayer`: an `https` client (rustls, with the web's root
//! certificates) whose type does not change when the layer goes on it. By default it talks to
//! the in-process sandbox's Sipay, over plain `http` on loopback: the token is fetched once
//! (through hyper too, with `ServiceSender`), put on every request, and when the API stops
//! accepting it the request is replayed with a fresh token without the caller seeing the 401.
//!
//! Against a real OAuth-style endpoint instead: `TOKEN_URL` (POSTed `TOKEN_REQUEST_JSON`, token
//! read at `TOKEN_POINTER`, default `/access_token`) and `API_URL`.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{Replay, Scope, TokenCache};
use tokenwarden_gateways::generic::JsonSource;
use tokenwarden_gateways::{ServiceSender, sipay};
use tokenwarden_sandbox::{Gateway, Sandbox};
use tokenwarden_tower::TokenLayer;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let issuer_client =
        ServiceSender(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let sandbox = match std::env::var("TOKEN_URL") {
        Ok(_) => None,
        Err(_) => Some(Sandbox::start().await?),
    };
    let (cache, api) = match &sandbox {
        Some(sandbox) => (
            sipay::cache(issuer_client, sandbox.sipay_config()).build()?,
            sandbox.api_url(Gateway::Sipay, "payments"),
        ),
        None => {
            let body = serde_json::from_str(
                &std::env::var("TOKEN_REQUEST_JSON").unwrap_or_else(|_| "{}".into()),
            )?;
            let source = JsonSource::json(issuer_client, &std::env::var("TOKEN_URL")?, body)?
                .with_token_pointer(
                    std::env::var("TOKEN_POINTER").unwrap_or_else(|_| "/access_token".into()),
                );
            (TokenCache::new(source), std::env::var("API_URL")?)
        }
    };

    // The client an application already has: https through rustls (plain http too, for the
    // loopback sandbox), bodies of type `Full<Bytes>`.
    // The provider is named: reqwest's TLS (aws-lc-rs) is compiled in too.
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    // The one line that matters: the layer goes on the client. Tokens go to the API's origin
    // only; `cloning_bodies()` keeps the client's body type (a `Full` is cheap to clone).
    let client = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), Scope::origin_of(&api)?).cloning_bodies())
        .service(client);

    for order in 1..=3 {
        if order == 3
            && let Some(sandbox) = &sandbox
        {
            sandbox.expire_tokens(Gateway::Sipay);
            println!("(the API now rejects the token)");
        }
        let request = http::Request::post(&api)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(r#"{{"order":{order}}}"#))))?;
        let response = client.clone().oneshot(request).await?;
        let replayed = matches!(
            response.extensions().get::<Replay>(),
            Some(Replay::Replayed { .. })
        );
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "order {order}: {status} {}{}",
            String::from_utf8_lossy(&body),
            if replayed {
                "  (replayed after a 401)"
            } else {
                ""
            }
        );
        if sandbox.is_some() {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(replayed, order == 3);
        }
    }
    println!("tokens fetched: {}", cache.stats().fetches);
    Ok(())
}
