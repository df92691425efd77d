//! `cargo run --example quickstart`
//!
//! Starts the in-process sandbox gateway, then drives concurrent traffic at the protected APIs of
//! its four token systems for a few token lifetimes — through a hyper client with the tower
//! layer and through reqwest clients with the middleware — while the sandbox forgets every
//! token once and fails one token request. Prints, per gateway: requests sent, tokens fetched,
//! 401s absorbed by replay, errors surfaced. Exits non-zero if any request failed or more tokens
//! were fetched than the scenario needs.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokenwarden::{Replay, Secret, TokenCache, TokenCacheBuilder};
use tokenwarden_gateways::boipa::{self, Action, ActionRequest};
use tokenwarden_gateways::payments::SessionTokens;
use tokenwarden_gateways::{IssuerClient, ServiceSender, sipay, torus};
use tokenwarden_reqwest::TokenMiddleware;
use tokenwarden_sandbox::{Fault, Gateway, Sandbox, SandboxConfig, credentials};
use tokenwarden_tower::{RequestBody, TokenLayer, TokenService};
use tower::ServiceExt;

const LIFETIME: Duration = Duration::from_secs(3);
const RUN_FOR: Duration = Duration::from_secs(8);
const WORKERS: usize = 12;
const PAUSE: Duration = Duration::from_millis(25);
const BOIPA_POOL: usize = 4;

type HyperClient = TokenService<
    Client<hyper_util::client::legacy::connect::HttpConnector, RequestBody<Full<Bytes>>>,
>;

/// The client each gateway is driven through.
#[derive(Clone)]
enum Driver {
    Reqwest(ClientWithMiddleware),
    Hyper(Box<HyperClient>),
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    replayed: AtomicU64,
    errors: AtomicU64,
}

struct Lane {
    gateway: Gateway,
    via: &'static str,
    cache: TokenCache,
    driver: Driver,
    tally: Arc<Tally>,
}

/// An error and every cause under it, each message once.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

impl Lane {
    async fn send(&self, url: &str) {
        self.tally.requests.fetch_add(1, Relaxed);
        let outcome = match &self.driver {
            Driver::Reqwest(client) => client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"amount":1999,"currency":"EUR"}"#)
                .send()
                .await
                .map(|r| (r.status().as_u16(), r.extensions().get::<Replay>().cloned()))
                .map_err(|e| chain(&e)),
            Driver::Hyper(client) => {
                let request = http::Request::post(url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        br#"{"amount":1999,"currency":"EUR"}"#,
                    )))
                    .expect("a valid request");
                client
                    .clone()
                    .oneshot(request)
                    .await
                    .map(|r| (r.status().as_u16(), r.extensions().get::<Replay>().cloned()))
                    .map_err(|e| chain(&*e))
            }
        };
        match outcome {
            Ok((200, replay)) => {
                if matches!(replay, Some(Replay::Replayed { .. })) {
                    self.tally.replayed.fetch_add(1, Relaxed);
                }
            }
            Ok((status, replay)) => {
                self.tally.errors.fetch_add(1, Relaxed);
                eprintln!("{}: HTTP {status} ({replay:?})", self.gateway);
            }
            Err(e) => {
                self.tally.errors.fetch_add(1, Relaxed);
                eprintln!("{}: {e}", self.gateway);
            }
        }
    }
}

/// Cache settings for the sandbox's short-lived tokens.
fn short_lived(builder: TokenCacheBuilder) -> TokenCacheBuilder {
    builder
        .with_clock_skew(Duration::from_millis(200))
        .with_mandatory_margin(Duration::from_millis(200))
        .with_default_lifetime(LIFETIME)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sandbox =
        Sandbox::start_with(SandboxConfig::default().with_token_lifetime(LIFETIME)).await?;
    println!(
        "tokenwarden quickstart — sandbox gateway at {}",
        sandbox.url()
    );
    println!(
        "{WORKERS} concurrent tasks per gateway for {} s; tokens live {} s; at 2.5 s the sandbox forgets every token, \
         at 5 s one Sipay token request fails\n",
        RUN_FOR.as_secs(),
        LIFETIME.as_secs()
    );

    let reqwest = IssuerClient::new()?;
    let hyper_issuer =
        ServiceSender(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    // Tokens go to the sandbox's origin only; the reqwest client never follows a redirect
    // away from it.
    let scope = sandbox.scope()?;
    let api_client = tokenwarden_reqwest::client_builder().build()?;
    let with_middleware = |cache: &TokenCache| {
        Driver::Reqwest(
            ClientBuilder::new(api_client.clone())
                .with(TokenMiddleware::new(cache.clone(), scope.clone()))
                .build(),
        )
    };
    let with_layer = |cache: &TokenCache| {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Driver::Hyper(Box::new(
            tower::ServiceBuilder::new()
                .layer(TokenLayer::new(cache.clone(), scope.clone()))
                .service(client),
        ))
    };

    let sipay = short_lived(sipay::cache(reqwest.clone(), sandbox.sipay_config())).build()?;
    let torus = short_lived(torus::cache(
        hyper_issuer,
        sandbox.torus_config().with_token_lifetime(LIFETIME),
    ))
    .build()?;
    let sessions = SessionTokens::new(
        reqwest.clone(),
        sandbox.base_url(Gateway::Payments),
        credentials::PAYMENTS_MERCHANT,
    )?
    .with_cache_settings(short_lived);
    sessions.register(
        "checkout",
        &Secret::new(credentials::PAYMENTS_AUTHENTICATION_TOKEN),
    )?;
    let payments = sessions.cache("checkout").expect("registered");
    let purchase = ActionRequest::new(Action::Purchase).with_channel("ECOM");
    let boipa = boipa::cache(
        reqwest.clone(),
        sandbox.boipa_config(),
        purchase,
        BOIPA_POOL,
    )
    .build()?;

    let lanes = Arc::new([
        Lane {
            gateway: Gateway::Sipay,
            via: "reqwest",
            driver: with_middleware(&sipay),
            cache: sipay,
            tally: Arc::default(),
        },
        Lane {
            gateway: Gateway::Torus,
            via: "hyper + tower",
            driver: with_layer(&torus),
            cache: torus,
            tally: Arc::default(),
        },
        Lane {
            gateway: Gateway::Payments,
            via: "hyper + tower",
            driver: with_layer(&payments),
            cache: payments,
            tally: Arc::default(),
        },
        Lane {
            gateway: Gateway::Boipa,
            via: "reqwest",
            driver: with_middleware(&boipa),
            cache: boipa,
            tally: Arc::default(),
        },
    ]);

    let start = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for lane in 0..lanes.len() {
        let url = sandbox.api_url(lanes[lane].gateway, "orders");
        for _ in 0..WORKERS {
            let (lanes, url) = (Arc::clone(&lanes), url.clone());
            workers.push(tokio::spawn(async move {
                while start.elapsed() < RUN_FOR {
                    lanes[lane].send(&url).await;
                    tokio::time::sleep(PAUSE).await;
                }
            }));
        }
    }

    let live = std::io::stdout().is_terminal();
    let (mut forgot, mut failed) = (false, false);
    while start.elapsed() < RUN_FOR {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !forgot && start.elapsed() >= Duration::from_millis(2500) {
            forgot = true;
            for gateway in Gateway::ALL {
                sandbox.expire_tokens(gateway);
            }
        }
        if !failed && start.elapsed() >= Duration::from_secs(5) {
            failed = true;
            sandbox.inject(Gateway::Sipay, Fault::ServerError, 1);
        }
        if live {
            let sent: u64 = lanes.iter().map(|l| l.tally.requests.load(Relaxed)).sum();
            let fetched: u64 = lanes.iter().map(|l| l.cache.stats().fetches).sum();
            print!(
                "\r  {:>4.1} s  {sent:>6} requests  {fetched:>5} tokens fetched",
                start.elapsed().as_secs_f64()
            );
            std::io::stdout().flush()?;
        }
    }
    for worker in workers {
        worker.await?;
    }
    if live {
        println!();
    }

    println!(
        "\n{:<14} {:<15} {:>9} {:>14} {:>14} {:>8}",
        "gateway", "client", "requests", "tokens fetched", "401s absorbed", "errors"
    );
    let mut problems = Vec::new();
    for lane in lanes.iter() {
        let requests = lane.tally.requests.load(Relaxed);
        let replayed = lane.tally.replayed.load(Relaxed);
        let errors = lane.tally.errors.load(Relaxed);
        let fetched = lane.cache.stats().fetches;
        println!(
            "{:<14} {:<15} {requests:>9} {fetched:>14} {replayed:>14} {errors:>8}",
            lane.gateway.to_string(),
            lane.via
        );
        // What the scenario needs: shared tokens are renewed ahead of expiry (at most about every
        // half lifetime), plus the first, one after the sandbox forgot them, one failed attempt;
        // single-use tokens, one per request and one per replay, plus the pool, refilled after
        // each rejection (which discards what was pooled or being fetched for the pool).
        let needed = if lane.cache.is_single_use() {
            requests + replayed + BOIPA_POOL as u64 * (1 + lane.cache.stats().invalidations)
        } else {
            (RUN_FOR.as_millis() / (LIFETIME.as_millis() / 2)) as u64 + 3
        };
        if errors > 0 {
            problems.push(format!(
                "{}: {errors} requests surfaced an error",
                lane.gateway
            ));
        }
        if fetched > needed {
            problems.push(format!(
                "{}: {fetched} tokens fetched, the scenario needs at most {needed}",
                lane.gateway
            ));
        }
    }
    let unauthorized: u64 = Gateway::ALL
        .iter()
        .map(|g| sandbox.stats(*g).unauthorized)
        .sum();
    println!(
        "\nThe sandbox answered 401 {unauthorized} times; every one was absorbed by a replay with a fresh token."
    );
    if problems.is_empty() {
        println!("No request failed, and no token was fetched that the scenario did not need.");
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}
