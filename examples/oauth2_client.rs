//! `cargo run --example oauth2_client [seconds]`
//!
//! OAuth 2.0 client credentials against a real OAuth 2.0 server: `oauth2-mock-server`
//! (Node.js; `scripts/install-oauth2-server.sh` installs it, and this example runs that script
//! when it is missing). The server issues RS256 JWTs that live 6 seconds; an API on loopback
//! verifies each request's token by signature and expiry. Eight tasks — half through the
//! reqwest middleware, half through the tower layer over hyper — call the API for 20 seconds
//! (or the number given), sharing one token cache. Halfway, the API revokes every token it has
//! seen: the layers refresh and replay, and no caller sees the 401.
//!
//! It prints what the API accepted and refused, and how many tokens were requested: with
//! the defaults a 6 s token keeps 4.5 s after the clock-skew margin and, in use, is refreshed
//! ahead 3.15 to 3.6 s after its fetch (docs/guarantees.md), so one token request per 3.15 to
//! 3.6 seconds, plus one for the revocation. It exits non-zero if any request failed at a
//! caller or more tokens were requested than that.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::ClientBuilder;
use tokenwarden::Scope;
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::oauth2::{self, ClientCredentials};
use tokenwarden_reqwest::TokenMiddleware;
use tokenwarden_test_support::{JwtApi, OAuth2Server};
use tower::{Layer as _, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    if std::env::var_os("TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(if std::env::var("TRACE").as_deref() == Ok("debug") {
                tracing::Level::DEBUG
            } else {
                tracing::Level::INFO
            })
            .with_writer(std::io::stderr)
            .init();
    }
    let server = OAuth2Server::start().await;
    server.configure(serde_json::json!({"ttl": 6})).await;
    let api = JwtApi::start(&server).await;
    let token_url = server.token_url();
    println!(
        "OAuth 2.0 server: {token_url} (6 s tokens); API: {}",
        api.origin()
    );

    // What a user writes: the credentials, a cache, the middleware on the client.
    let credentials = ClientCredentials::new(IssuerClient::new()?, &token_url, "app", "s3cr3t")?
        .with_scopes(["payments:read", "payments:write"]);
    let cache = oauth2::cache(credentials).build()?;
    let reqwest = ClientBuilder::new(tokenwarden_reqwest::client_builder().build()?)
        .with(TokenMiddleware::new(
            cache.clone(),
            Scope::origin(&api.origin())?,
        ))
        .build();

    // The same cache behind the tower layer, over hyper.
    let hyper = tokenwarden_tower::TokenLayer::new(cache.clone(), Scope::origin(&api.origin())?)
        .cloning_bodies()
        .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    let url = api.url("/payments");
    let run = Duration::from_secs(seconds);
    let start = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (reqwest, hyper, url) = (reqwest.clone(), hyper.clone(), url.clone());
        let (sent, failed) = (Arc::clone(&sent), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run {
                let status = if task % 2 == 0 {
                    match reqwest.get(&url).send().await {
                        Ok(response) => response.status(),
                        Err(error) => {
                            eprintln!("reqwest: {error}");
                            StatusCode::BAD_GATEWAY
                        }
                    }
                } else {
                    let request = Request::get(&url).body(Empty::new()).expect("a request");
                    match hyper.clone().oneshot(request).await {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.into_body().collect().await;
                            status
                        }
                        Err(error) => {
                            eprintln!("hyper: {error}");
                            StatusCode::BAD_GATEWAY
                        }
                    }
                };
                sent.fetch_add(1, SeqCst);
                if status != StatusCode::OK {
                    failed.fetch_add(1, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(run / 2).await;
    api.revoke_all();
    println!(
        "{:>5.1} s: the API revoked every token it had seen",
        start.elapsed().as_secs_f64()
    );
    for task in tasks {
        task.await?;
    }

    let (sent, failed) = (sent.load(SeqCst), failed.load(SeqCst));
    let token_requests = server.requests().await.len();
    let stats = cache.stats();
    println!("requests sent:          {sent} in {seconds} s (8 tasks, both layers)");
    println!("failed at a caller:     {failed}");
    println!(
        "API accepted / refused: {} / {} (each refusal replayed with a fresh token)",
        api.accepted(),
        api.refused()
    );
    println!(
        "token requests:         {token_requests} (refreshed ahead: {}, after a 401: {}; \
         invalidations held off: {}, already replaced: {})",
        stats.refreshes_ahead,
        stats.invalidations,
        stats.suppressed_invalidations,
        stats.coalesced_invalidations
    );
    // A refresh every 3.15 s at the earliest (70 % of 4.5 s), the first token, the one after
    // the revocation, and one for a refresh the jitter may add.
    let budget = usize::try_from(seconds * 100 / 315 + 3)?;
    if failed > 0 || token_requests > budget {
        return Err(format!(
            "{failed} failed requests, {token_requests} token requests (at most {budget} expected)"
        )
        .into());
    }
    Ok(())
}
