//! `cargo run --example hyper_client`
//!
//! A hyper-util client with the `TokenLayer`. By default it talks to the in-process sandbox's
//! Sipay: the token is fetched once (through hyper too, with `ServiceSender`), put on every
//! request, and when the API stops accepting it the request is replayed with a fresh token
//! without the caller seeing the 401.
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
use tokenwarden_tower::{RequestBody, TokenLayer};
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
            sipay::cache(issuer_client, sandbox.sipay_config())?.build()?,
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

    // The one line that matters: the layer goes on the client.
    let client = Client::builder(TokioExecutor::new()).build_http::<RequestBody<Full<Bytes>>>();
    // Tokens go to the API's origin only: any other host gets no token header.
    let client = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), Scope::origin_of(&api)?))
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
