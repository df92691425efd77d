//! `cargo run --example multi_merchant`
//!
//! Many merchants in one process: the in-process sandbox knows `MERCHANTS` merchants (default
//! 200) at every gateway, and one keyed cache per gateway holds a token cache per merchant,
//! made on first use from that merchant's credentials. Torus and the Payments API go through
//! the tower layer over a hyper client, Sipay and BOIPA through the reqwest middleware; each
//! request names its merchant with a `TokenKey` extension, and the layer picks that merchant's
//! token. A shared refresh budget caps each gateway's token calls per second.
//!
//! It checks what it prints — every request answered 200 for the merchant it named, a request
//! without a merchant refused before anything is sent, and the token requests docs/keyed.md
//! says to expect — and exits non-zero otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{
    KeyError, KeyedCache, RefreshBudget, Replay, Scope, Secret, TokenCache, TokenKey,
};
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::boipa::{self, Action, ActionRequest, BoipaConfig};
use tokenwarden_gateways::payments::{self, SessionTokenSource};
use tokenwarden_gateways::sipay::{self, SipayConfig};
use tokenwarden_gateways::torus::{self, TorusConfig};
use tokenwarden_reqwest::TokenMiddleware;
use tokenwarden_sandbox::{Gateway, Sandbox, SandboxConfig, credentials};
use tokenwarden_tower::TokenLayer;
use tower::{BoxError, Layer as _, ServiceExt};

/// Requests per merchant and gateway, per round.
const REQUESTS: usize = 5;

/// One keyed cache per gateway, keyed by merchant number, each with a refresh budget.
fn keyed(sandbox: &Sandbox, gateway: Gateway, http: &IssuerClient) -> KeyedCache<usize> {
    let base = sandbox.base_url(gateway);
    let http = http.clone();
    KeyedCache::builder()
        .with_name(gateway.to_string())
        .with_capacity(sandbox.merchants())
        .with_key_label(|merchant: &usize| format!("merchant-{merchant}"))
        .with_refresh_budget(RefreshBudget::per_second(200))
        .with_factory(move |&merchant: &usize| {
            let m = credentials::merchant(merchant);
            match gateway {
                Gateway::Torus => Ok(torus::cache(
                    http.clone(),
                    TorusConfig::new(
                        &base,
                        m.torus_request_token,
                        m.torus_api_key,
                        m.torus_api_secret,
                    ),
                )),
                Gateway::Sipay => Ok(sipay::cache(
                    http.clone(),
                    SipayConfig::new(&base, m.sipay_app_id, m.sipay_app_secret),
                )),
                Gateway::Boipa => Ok(boipa::cache(
                    http.clone(),
                    BoipaConfig::new(
                        &base,
                        m.boipa_merchant_id,
                        m.boipa_password,
                        "https://shop.example",
                    ),
                    ActionRequest::new(Action::Purchase),
                    0,
                )),
                Gateway::Payments => {
                    let source = SessionTokenSource::new(
                        http.clone(),
                        &base,
                        &Secret::new(m.payments_authentication_token),
                        &m.payments_merchant,
                    )?;
                    Ok(TokenCache::builder(source)
                        .with_presentation(payments::presentation(&m.payments_merchant)?)
                        .with_default_lifetime(payments::DEFAULT_SESSION_LIFETIME))
                }
            }
        })
        .build()
}

/// What a round of requests came to, for one gateway.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    replayed: AtomicU64,
    wrong: AtomicU64,
}

/// A request's outcome: status, the merchant the API says the token belonged to, replayed.
type Outcome = Result<(u16, Option<u64>, bool), BoxError>;

fn merchant_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["merchant"].as_u64()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let merchants: usize = std::env::var("MERCHANTS")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(200);
    let sandbox =
        Arc::new(Sandbox::start_with(SandboxConfig::default().with_merchants(merchants)).await?);
    let scope = Scope::origin(&sandbox.url())?;
    let http = IssuerClient::new()?;
    println!(
        "tokenwarden multi-merchant — sandbox at {}, {merchants} merchants at each of 4 gateways",
        sandbox.url()
    );

    // The tower layer over a hyper client (Torus, Payments API) …
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let tower_clients = [Gateway::Torus, Gateway::Payments].map(|gateway| {
        let keyed = keyed(&sandbox, gateway, &http);
        let client = TokenLayer::keyed(keyed.clone(), scope.clone())
            .cloning_bodies()
            .layer(hyper.clone());
        (gateway, keyed, client)
    });
    // … and the reqwest middleware (Sipay, BOIPA).
    let reqwest_clients = [Gateway::Sipay, Gateway::Boipa].map(|gateway| {
        let keyed = keyed(&sandbox, gateway, &http);
        let client = reqwest_middleware::ClientBuilder::new(
            tokenwarden_reqwest::client_builder()
                .no_proxy()
                .build()
                .expect("a reqwest client"),
        )
        .with(TokenMiddleware::keyed(keyed.clone(), scope.clone()))
        .build();
        (gateway, keyed, client)
    });

    let send = {
        let (tower_clients, reqwest_clients, sandbox) = (
            tower_clients.clone(),
            reqwest_clients.clone(),
            Arc::clone(&sandbox),
        );
        move |gateway: Gateway,
              merchant: Option<usize>|
              -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> {
            let url = sandbox.api_url(gateway, "orders");
            if let Some((_, _, client)) = tower_clients.iter().find(|(g, ..)| *g == gateway) {
                let client = client.clone();
                Box::pin(async move {
                    let mut request =
                        http::Request::post(url).body(Full::new(Bytes::from_static(b"{}")))?;
                    if let Some(merchant) = merchant {
                        request.extensions_mut().insert(TokenKey(merchant));
                    }
                    let response = client.oneshot(request).await?;
                    let replayed = matches!(
                        response.extensions().get::<Replay>(),
                        Some(Replay::Replayed { .. })
                    );
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok((status, merchant_of(&body), replayed))
                })
            } else {
                let (_, _, client) = reqwest_clients
                    .iter()
                    .find(|(g, ..)| *g == gateway)
                    .expect("every gateway has a client");
                let client = client.clone();
                Box::pin(async move {
                    let mut request = client.post(url).body("{}");
                    if let Some(merchant) = merchant {
                        request = request.with_extension(TokenKey(merchant));
                    }
                    let response = request.send().await?;
                    let replayed = matches!(
                        response.extensions().get::<Replay>(),
                        Some(Replay::Replayed { .. })
                    );
                    let status = response.status().as_u16();
                    let body = response.bytes().await?;
                    Ok((status, merchant_of(&body), replayed))
                })
            }
        }
    };
    let send = Arc::new(send);

    // One round: every merchant, REQUESTS requests at each gateway, all at once.
    let round = |name: &'static str| {
        let send = Arc::clone(&send);
        async move {
            let started = Instant::now();
            let tallies: Arc<[Tally; 4]> = Arc::default();
            let mut tasks = tokio::task::JoinSet::new();
            for merchant in 0..merchants {
                for (i, gateway) in Gateway::ALL.into_iter().enumerate() {
                    let (send, tallies) = (Arc::clone(&send), Arc::clone(&tallies));
                    tasks.spawn(async move {
                        for _ in 0..REQUESTS {
                            let (status, owner, replayed) = send(gateway, Some(merchant)).await?;
                            let tally = &tallies[i];
                            if status == 200 && owner == Some(merchant as u64) {
                                tally.ok.fetch_add(1, Relaxed);
                            } else {
                                tally.wrong.fetch_add(1, Relaxed);
                            }
                            if replayed {
                                tally.replayed.fetch_add(1, Relaxed);
                            }
                        }
                        Ok::<_, BoxError>(())
                    });
                }
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            println!(
                "\n{name}: {} requests in {:.2} s",
                merchants * 4 * REQUESTS,
                started.elapsed().as_secs_f64()
            );
            Ok::<_, BoxError>(tallies)
        }
    };

    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    let print = |tallies: &[Tally; 4], sandbox: &Sandbox| {
        println!(
            "  {:<13} {:>8} {:>14} {:>9} {:>14} {:>6}",
            "gateway", "200 own", "wrong/failed", "replayed", "token calls Σ", "401s Σ"
        );
        for (i, gateway) in Gateway::ALL.into_iter().enumerate() {
            let stats = sandbox.stats(gateway);
            println!(
                "  {:<13} {:>8} {:>14} {:>9} {:>14} {:>6}",
                gateway.to_string(),
                tallies[i].ok.load(Relaxed),
                tallies[i].wrong.load(Relaxed),
                tallies[i].replayed.load(Relaxed),
                stats.token_requests,
                stats.unauthorized
            );
        }
    };

    // Round 1: first use of every merchant's cache.
    let tallies = round("round 1, every merchant's first requests").await?;
    print(&tallies, &sandbox);
    let per_round = (merchants * REQUESTS) as u64;
    for (i, gateway) in Gateway::ALL.into_iter().enumerate() {
        let stats = sandbox.stats(gateway);
        check(
            tallies[i].ok.load(Relaxed) == per_round,
            format!("{gateway}: every request answered 200 for its own merchant"),
        );
        let expected = if gateway == Gateway::Boipa {
            per_round
        } else {
            merchants as u64
        };
        check(
            stats.token_requests == expected,
            format!(
                "{gateway}: {} token requests, expected {expected}",
                stats.token_requests
            ),
        );
        let spread = (0..merchants)
            .filter(|&m| sandbox.merchant_stats(gateway, m).tokens_issued > 0)
            .count();
        check(
            spread == merchants,
            format!("{gateway}: tokens issued to {spread} of {merchants} merchants"),
        );
    }

    // A request that names no merchant: refused, nothing sent.
    let before = sandbox.stats(Gateway::Torus).api_requests;
    match send(Gateway::Torus, None).await {
        Err(error) if matches!(error.downcast_ref::<KeyError>(), Some(KeyError::Missing)) => {
            println!("\na request naming no merchant: refused unsent ({error})");
        }
        other => check(
            false,
            format!("a request without a key: {:?}", other.map(|o| o.0)),
        ),
    }
    check(
        sandbox.stats(Gateway::Torus).api_requests == before,
        "nothing reached the API without a key".into(),
    );

    // Round 2: Torus and Sipay forget every token; each merchant's first request is rejected,
    // its cache refreshes once, and the request is replayed.
    sandbox.expire_tokens(Gateway::Torus);
    sandbox.expire_tokens(Gateway::Sipay);
    println!("(Torus and Sipay now reject every token they issued)");
    let before: Vec<_> = Gateway::ALL.map(|g| sandbox.stats(g)).to_vec();
    let tallies = round("round 2, after the gateways forgot their tokens").await?;
    print(&tallies, &sandbox);
    for (i, gateway) in Gateway::ALL.into_iter().enumerate() {
        let stats = sandbox.stats(gateway);
        let calls = stats.token_requests - before[i].token_requests;
        check(
            tallies[i].ok.load(Relaxed) == per_round,
            format!("{gateway}: every request of round 2 answered 200 for its own merchant"),
        );
        let expected = match gateway {
            Gateway::Torus | Gateway::Sipay => merchants as u64,
            Gateway::Boipa => per_round,
            Gateway::Payments => 0,
        };
        check(
            calls == expected,
            format!("{gateway}: {calls} token requests in round 2, expected {expected}"),
        );
    }

    // Health: keys by state, per gateway.
    println!();
    for (gateway, keyed) in tower_clients
        .iter()
        .map(|(g, k, _)| (g, k))
        .chain(reqwest_clients.iter().map(|(g, k, _)| (g, k)))
    {
        let summary = keyed.summary(3);
        println!(
            "health {:<13} keys {:>5}: fresh {:>5}, refreshing {}, backing off {}, rejected {}, empty {}",
            gateway.to_string(),
            summary.keys,
            summary.fresh,
            summary.refreshing,
            summary.backing_off,
            summary.rejected,
            summary.empty
        );
        check(
            summary.keys == merchants && summary.rejected == 0 && summary.backing_off == 0,
            format!("{gateway}: health"),
        );
    }

    if failures.is_empty() {
        println!("\nall checks passed");
        Ok(())
    } else {
        for failure in &failures {
            eprintln!("FAILED: {failure}");
        }
        std::process::exit(1);
    }
}
