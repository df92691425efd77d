//! `cargo run --example client_app`
//!
//! The client-app half of the Payments API delegation flow: it gets session tokens from its
//! merchant server (never an authentication token), calls the Payments API directly with
//! `Authorization: Bearer <session token>` and `Merchant-Account`, and when a session token is
//! rejected (401) it gets a new one and replays the request without the calling code noticing.
//!
//! By default it starts the sandbox and a merchant server in-process; against real ones, set
//! `MERCHANT_SERVER_URL` (the session endpoint), `PAYMENTS_API_URL` (an API URL to call),
//! `PAYMENTS_MERCHANT` and `CLIENT_KEY`.

#[path = "support/merchant.rs"]
mod merchant;

use std::time::Duration;

use reqwest_middleware::ClientBuilder;
use tokenwarden::{Replay, Scope, Secret, TokenCache};
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::payments::{self, ClientAppSource, SessionTokens};
use tokenwarden_reqwest::TokenMiddleware;
use tokenwarden_sandbox::{Gateway, Sandbox, credentials};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sandbox = None;
    let (session_endpoint, api, merchant_account, client_key) = match (
        std::env::var("MERCHANT_SERVER_URL"),
        std::env::var("PAYMENTS_API_URL"),
        std::env::var("PAYMENTS_MERCHANT"),
        std::env::var("CLIENT_KEY"),
    ) {
        (Ok(endpoint), Ok(api), Ok(merchant), Ok(key)) => (endpoint, api, merchant, key),
        _ => {
            let started = Sandbox::start().await?;
            let sessions = SessionTokens::new(
                IssuerClient::new()?,
                started.base_url(Gateway::Payments),
                credentials::PAYMENTS_MERCHANT,
            )?;
            sessions.register(
                merchant::USE_CASE,
                &Secret::new(credentials::PAYMENTS_AUTHENTICATION_TOKEN),
            )?;
            let merchant_server = merchant::serve(sessions).await?;
            let api = started.api_url(Gateway::Payments, "payments");
            println!(
                "sandbox at {}, merchant server at http://{merchant_server}",
                started.url()
            );
            sandbox = Some(started);
            (
                format!("http://{merchant_server}/session"),
                api,
                credentials::PAYMENTS_MERCHANT.to_owned(),
                merchant::CLIENT_KEY.to_owned(),
            )
        }
    };

    // The client app's token source: its merchant server, with its own credential.
    let source = ClientAppSource::new(IssuerClient::new()?, &session_endpoint)?.with_header(
        http::HeaderName::from_static("x-client-key"),
        &Secret::new(client_key),
    )?;
    let cache = TokenCache::builder(source)
        .with_name("client app session")
        .with_presentation(payments::presentation(&merchant_account)?)
        .build()?;
    // Session tokens go to the Payments API's origin only, and the client never follows a
    // redirect away from it.
    let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build()?)
        .with(TokenMiddleware::new(cache.clone(), Scope::origin_of(&api)?))
        .build();

    for payment in 1..=4 {
        if payment == 3
            && let Some(sandbox) = &sandbox
        {
            // The session token's time is up at the API (as after 15 minutes).
            sandbox.expire_tokens(Gateway::Payments);
            println!("(the API now rejects the session token)");
        }
        let response = client
            .post(&api)
            .header("content-type", "application/json")
            .body(format!(r#"{{"payment":{payment},"amount":1999}}"#))
            .send()
            .await?;
        let replayed = matches!(
            response.extensions().get::<Replay>(),
            Some(Replay::Replayed { .. })
        );
        println!(
            "payment {payment}: {}{}",
            response.status(),
            if replayed {
                " (session token renewed and request replayed)"
            } else {
                ""
            }
        );
        assert!(response.status().is_success());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = cache.stats();
    println!(
        "session tokens fetched from the merchant server: {}",
        stats.fetches
    );
    if sandbox.is_some() {
        assert_eq!(
            stats.fetches, 2,
            "one at the start, one after the rejection"
        );
    }
    Ok(())
}
