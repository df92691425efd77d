//! `cargo run --example merchant_server`
//!
//! The merchant-server half of the Payments API delegation flow: it holds an authentication
//! token and mints short-lived session tokens for the client apps it has authenticated, through
//! `SessionTokens`. By default it runs against the in-process sandbox, serves three demo client
//! apps and exits; against a real endpoint, set `PAYMENTS_API_URL`,
//! `PAYMENTS_AUTHENTICATION_TOKEN` and `PAYMENTS_MERCHANT`, and `MERCHANT_SERVER_SERVE=1` to keep
//! serving.

#[path = "support/merchant.rs"]
mod merchant;

use tokenwarden::Secret;
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::payments::SessionTokens;
use tokenwarden_sandbox::{Gateway, Sandbox, credentials};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sandbox;
    let (base, authentication_token, merchant_account) = match (
        std::env::var("PAYMENTS_API_URL"),
        std::env::var("PAYMENTS_AUTHENTICATION_TOKEN"),
        std::env::var("PAYMENTS_MERCHANT"),
    ) {
        (Ok(base), Ok(token), Ok(merchant)) => (base, token, merchant),
        _ => {
            sandbox = Sandbox::start().await?;
            println!("Payments API: the sandbox at {}", sandbox.url());
            (
                sandbox.base_url(Gateway::Payments),
                credentials::PAYMENTS_AUTHENTICATION_TOKEN.to_owned(),
                credentials::PAYMENTS_MERCHANT.to_owned(),
            )
        }
    };

    let sessions = SessionTokens::new(IssuerClient::new()?, base, merchant_account)?;
    sessions.register(merchant::USE_CASE, &Secret::new(authentication_token))?;
    let addr = merchant::serve(sessions.clone()).await?;
    println!("merchant server: POST http://{addr}/session (header x-client-key)");

    if std::env::var_os("MERCHANT_SERVER_SERVE").is_some() {
        std::future::pending::<()>().await;
    }

    // Three client apps ask for session tokens; an unknown one is turned away.
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/session");
    let mut tokens = Vec::new();
    for app in 1..=3 {
        let response = http
            .post(&url)
            .header("x-client-key", merchant::CLIENT_KEY)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
        let token = body["token"].as_str().unwrap_or_default().to_owned();
        // A session token is a credential: shown here only by its length.
        println!(
            "client app {app}: {status}, a session token of {} characters",
            token.len()
        );
        assert!(status.is_success(), "{body}");
        tokens.push(token);
    }
    let intruder = http.post(&url).send().await?;
    println!("unauthenticated client: {}", intruder.status());
    assert_eq!(intruder.status(), 401);
    tokens.sort();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        3,
        "every client app got its own session token"
    );
    println!("every client app got a session token of its own");
    Ok(())
}
