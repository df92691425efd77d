//! `cargo run --example reqwest_client`
//!
//! A `reqwest_middleware` client with the `TokenMiddleware`. By default it talks to the
//! in-process sandbox's Torus: the access token is fetched once and put on every request, and
//! when the API stops accepting it the request is replayed with a fresh token without the
//! caller seeing the 401.
//!
//! Against a real OAuth-style endpoint instead: `TOKEN_URL` (POSTed `TOKEN_REQUEST_JSON`, token
//! read at `TOKEN_POINTER`, default `/access_token`) and `API_URL`.

use reqwest_middleware::ClientBuilder;
use tokenwarden::{Replay, Scope, TokenCache};
use tokenwarden_gateways::generic::JsonSource;
use tokenwarden_gateways::{IssuerClient, torus};
use tokenwarden_reqwest::TokenMiddleware;
use tokenwarden_sandbox::{Gateway, Sandbox};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sandbox = match std::env::var("TOKEN_URL") {
        Ok(_) => None,
        Err(_) => Some(Sandbox::start().await?),
    };
    let (cache, api) = match &sandbox {
        Some(sandbox) => (
            torus::cache(IssuerClient::new()?, sandbox.torus_config()).build()?,
            sandbox.api_url(Gateway::Torus, "orders"),
        ),
        None => {
            let body = serde_json::from_str(
                &std::env::var("TOKEN_REQUEST_JSON").unwrap_or_else(|_| "{}".into()),
            )?;
            let source =
                JsonSource::json(IssuerClient::new()?, &std::env::var("TOKEN_URL")?, body)?
                    .with_token_pointer(
                        std::env::var("TOKEN_POINTER").unwrap_or_else(|_| "/access_token".into()),
                    );
            (TokenCache::new(source), std::env::var("API_URL")?)
        }
    };

    // The one line that matters: the middleware goes on the client.
    // A client that never follows a redirect out of the origin, and tokens for the API's
    // origin only.
    let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build()?)
        .with(TokenMiddleware::new(cache.clone(), Scope::origin_of(&api)?))
        .build();

    for order in 1..=3 {
        if order == 3
            && let Some(sandbox) = &sandbox
        {
            sandbox.expire_tokens(Gateway::Torus);
            println!("(the API now rejects the token)");
        }
        let response = client
            .post(&api)
            .body(format!(r#"{{"order":{order}}}"#))
            .send()
            .await?;
        let replayed = matches!(
            response.extensions().get::<Replay>(),
            Some(Replay::Replayed { .. })
        );
        let status = response.status();
        println!(
            "order {order}: {status} {}{}",
            response.text().await?,
            if replayed {
                "  (replayed after a 401)"
            } else {
                ""
            }
        );
        if sandbox.is_some() {
            assert!(status.is_success());
            assert_eq!(replayed, order == 3);
        }
    }
    println!("tokens fetched: {}", cache.stats().fetches);
    Ok(())
}
