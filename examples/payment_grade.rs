//! `cargo run --example payment_grade [seconds]`
//!
//! Payment-grade OAuth 2.0 against the in-process sandbox, no server to install: the client
//! authenticates with a signed assertion (`private_key_jwt`), its tokens are bound to a DPoP
//! key, and every API request carries a fresh proof of that key. The sandbox checks all of it:
//! the assertion's signature and claims, each proof's signature, `htm`, `htu`, `iat`, `ath`,
//! its `jti` (never twice) and its nonce, and that the proof's key is the token's.
//!
//! Eight tasks — half through the tower layer over hyper, half through the reqwest middleware —
//! call the API for 8 seconds (or the number given) with 6 s tokens. Halfway, the sandbox
//! rotates its DPoP nonce: the layers answer the `use_dpop_nonce` challenge by sending the
//! request again with the same token, and no caller sees the 401. It exits non-zero if any
//! request failed at a caller, any proof was refused, or more tokens were fetched than the
//! token lifetime needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tokenwarden::Replay;
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::dpop::DpopKey;
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_gateways::oauth2::{self, ClientCredentials};
use tokenwarden_sandbox::{Sandbox, SandboxConfig};
use tower::{Layer as _, ServiceExt};

/// The client's keys, as `openssl genpkey -algorithm ed25519` (or `-algorithm EC -pkeyopt
/// ec_paramgen_curve:P-256`) writes them. Real keys live in a secret store, not in code.
const CLIENT_KEY: &str = include_str!("../crates/tokenwarden-gateways/tests/data/keys/p256.pem");
const DPOP_KEY: &str = include_str!("../crates/tokenwarden-gateways/tests/data/keys/ed25519.pem");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8);
    let sandbox =
        Sandbox::start_with(SandboxConfig::default().with_token_lifetime(Duration::from_secs(6)))
            .await?;

    // The client signs its assertions with one key (registered with the server) and binds its
    // tokens to another.
    let client_key = SigningKey::from_pkcs8_pem(Algorithm::Es256, CLIENT_KEY)?.with_key_id("k1");
    sandbox.register_client("payments-client", client_key.public_jwk());
    let dpop = DpopKey::new(SigningKey::from_pkcs8_pem(Algorithm::EdDsa, DPOP_KEY)?);
    let credentials = ClientCredentials::private_key_jwt(
        IssuerClient::new()?,
        &sandbox.oauth2_token_url(),
        "payments-client",
        client_key,
    )?
    .with_dpop(dpop.clone());
    let cache = oauth2::cache(credentials).build()?;
    println!(
        "client key registered; tokens bound to the DPoP key {}",
        dpop.thumbprint()
    );

    let scope = sandbox.scope()?;
    let hyper = tokenwarden_tower::TokenLayer::new(cache.clone(), scope.clone())
        .cloning_bodies()
        .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let reqwest =
        reqwest_middleware::ClientBuilder::new(tokenwarden_reqwest::client_builder().build()?)
            .with(tokenwarden_reqwest::TokenMiddleware::new(
                cache.clone(),
                scope,
            ))
            .build();
    let url = sandbox.oauth2_api_url("/v1/payments");

    let run = Duration::from_secs(seconds);
    let start = Instant::now();
    let (sent, failed, nonce_replays) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (hyper, reqwest, url) = (hyper.clone(), reqwest.clone(), url.clone());
        let (sent, failed, nonce_replays) = (
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&nonce_replays),
        );
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run {
                let (status, replay) = if task % 2 == 0 {
                    let request = Request::get(&url).body(Empty::new()).expect("a request");
                    match hyper.clone().oneshot(request).await {
                        Ok(response) => {
                            let replay = response.extensions().get::<Replay>().cloned();
                            let status = response.status();
                            let _ = response.into_body().collect().await;
                            (status, replay)
                        }
                        Err(_) => (StatusCode::BAD_GATEWAY, None),
                    }
                } else {
                    match reqwest.get(&url).send().await {
                        Ok(response) => (
                            response.status(),
                            response.extensions().get::<Replay>().cloned(),
                        ),
                        Err(_) => (StatusCode::BAD_GATEWAY, None),
                    }
                };
                sent.fetch_add(1, SeqCst);
                if status != StatusCode::OK {
                    failed.fetch_add(1, SeqCst);
                }
                if matches!(replay, Some(Replay::WithNonce { .. })) {
                    nonce_replays.fetch_add(1, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(run / 2).await;
    sandbox.rotate_dpop_nonce();
    println!(
        "{:>5.1} s: the sandbox rotated its DPoP nonce",
        start.elapsed().as_secs_f64()
    );
    for task in tasks {
        task.await?;
    }

    let elapsed = start.elapsed().as_secs_f64();
    let stats = sandbox.oauth2_stats();
    let (sent, failed) = (sent.load(SeqCst), failed.load(SeqCst));
    let fetched = cache.stats().fetches;
    println!("requests sent:           {sent} in {elapsed:.1} s (8 tasks, both layers)");
    println!("failed at a caller:      {failed}");
    println!(
        "proofs verified:         {} ({:.0}/s); accepted {}, refused {}",
        stats.api_requests,
        stats.api_requests as f64 / elapsed,
        stats.api_accepted,
        stats.refused
    );
    println!(
        "nonce challenges:        {} (token endpoint and API), answered with the same token: {}",
        stats.nonce_challenges,
        nonce_replays.load(SeqCst)
    );
    println!(
        "tokens fetched:          {fetched} ({} token requests, {} tokens issued)",
        stats.token_requests, stats.tokens_issued
    );
    // A 6 s token keeps 4.5 s after the skew margin and is refreshed ahead at 70-80 % of it.
    let most = (seconds as f64 / 3.15).ceil() as u64 + 1;
    if failed > 0 || stats.refused > 0 || fetched > most {
        return Err(format!(
            "{failed} requests failed, {} refused, {fetched} tokens fetched (at most {most})",
            stats.refused
        )
        .into());
    }
    Ok(())
}
