//! `cargo run --example quickstart`
//!
//! Starts an in-process token issuer and an in-process API that checks the
//! `Authorization: Bearer` header of every request, then drives concurrent traffic through one
//! shared `TokenCache` and reports what happened: tokens fetched once and shared, renewed ahead
//! of expiry while traffic flows, and a server-side revocation absorbed by invalidating the
//! rejected token and replaying the request. No network, no credentials.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use tokenwarden::{FetchError, Presentation, Token, TokenCache};
use tokio::time::Instant;

const LIFETIME: Duration = Duration::from_millis(1500);

/// The issuer: mints tokens with a short lifetime and remembers which are valid.
#[derive(Default)]
struct Issuer {
    minted: AtomicU64,
    valid: Mutex<HashMap<String, Instant>>,
}

impl Issuer {
    async fn mint(&self) -> Result<Token, FetchError> {
        tokio::time::sleep(Duration::from_millis(30)).await; // a round trip
        let n = self.minted.fetch_add(1, Relaxed) + 1;
        let value = format!("sandbox-token-{n}-{:08x}", fastrand_u32(n));
        let expires = Instant::now() + LIFETIME;
        self.valid.lock().unwrap().insert(value.clone(), expires);
        Ok(Token::new(value).with_expires_in(LIFETIME))
    }

    /// The API: 200 for a known, unexpired token, 401 otherwise, after 5 ms of work.
    async fn handle(&self, request: &Request<()>) -> StatusCode {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Some(token) = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return StatusCode::UNAUTHORIZED;
        };
        match self.valid.lock().unwrap().get(token) {
            Some(expires) if Instant::now() < *expires => StatusCode::OK,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn revoke_all(&self) {
        self.valid.lock().unwrap().clear();
    }
}

fn fastrand_u32(seed: u64) -> u32 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

#[derive(Default)]
struct Report {
    requests: AtomicU64,
    absorbed_401: AtomicU64,
    errors: AtomicU64,
}

/// Sends one request with the cached token; on 401 invalidates that token and replays once.
async fn send(cache: &TokenCache, issuer: &Issuer, report: &Report) {
    report.requests.fetch_add(1, Relaxed);
    for attempt in 0..2 {
        let snapshot = match cache.get().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                report.errors.fetch_add(1, Relaxed);
                return;
            }
        };
        let mut request = Request::new(());
        snapshot.apply_to(request.headers_mut());
        match issuer.handle(&request).await {
            StatusCode::UNAUTHORIZED if attempt == 0 => {
                report.absorbed_401.fetch_add(1, Relaxed);
                cache.invalidate(snapshot.id());
            }
            StatusCode::OK => return,
            _ => break,
        }
    }
    report.errors.fetch_add(1, Relaxed);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let issuer = Arc::new(Issuer::default());
    let source = {
        let issuer = Arc::clone(&issuer);
        move || {
            let issuer = Arc::clone(&issuer);
            async move { issuer.mint().await }
        }
    };
    let cache = TokenCache::builder(source)
        .with_name("sandbox")
        .with_presentation(Presentation::bearer())
        .with_clock_skew(Duration::from_millis(100))
        .with_mandatory_margin(Duration::from_millis(100))
        .build()?;
    let report = Arc::new(Report::default());

    println!("tokenwarden quickstart: one shared TokenCache, an in-process issuer and API");
    println!("(tokens live {} ms)\n", LIFETIME.as_millis());

    // 1. A stampede on an empty cache.
    let burst: Vec<_> = (0..500)
        .map(|_| {
            let (cache, issuer, report) = (cache.clone(), issuer.clone(), report.clone());
            tokio::spawn(async move { send(&cache, &issuer, &report).await })
        })
        .collect();
    for task in burst {
        task.await?;
    }
    println!(
        "1. 500 concurrent requests on an empty cache   -> {} token fetch(es)",
        cache.stats().fetches
    );

    // 2. Steady traffic over a few token lifetimes: renewed ahead of expiry, nobody waits.
    let waits_before = cache.stats().waits;
    let run_for = Duration::from_secs(4);
    let start = Instant::now();
    let workers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, issuer, report) = (cache.clone(), issuer.clone(), report.clone());
            tokio::spawn(async move {
                while start.elapsed() < run_for {
                    send(&cache, &issuer, &report).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let live = std::io::stdout().is_terminal();
    while start.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !live {
            continue;
        }
        print!(
            "\r2. steady traffic: {:>6} requests, {} tokens so far",
            report.requests.load(Relaxed),
            cache.stats().fetches
        );
        std::io::stdout().flush()?;
    }
    for worker in workers {
        worker.await?;
    }
    let stats = cache.stats();
    if live {
        print!("\r");
    }
    println!(
        "2. {} s of traffic from 50 tasks               -> {} refreshes ahead of expiry, {} callers waited",
        run_for.as_secs(),
        stats.refreshes_ahead,
        stats.waits - waits_before
    );

    // 3. The API forgets every token: requests get 401, the rejected token is invalidated
    //    (once, however many requests carried it) and each request is replayed.
    let fetches_before = cache.stats().fetches;
    issuer.revoke_all();
    let storm: Vec<_> = (0..300)
        .map(|_| {
            let (cache, issuer, report) = (cache.clone(), issuer.clone(), report.clone());
            tokio::spawn(async move { send(&cache, &issuer, &report).await })
        })
        .collect();
    for task in storm {
        task.await?;
    }
    let stats = cache.stats();
    println!(
        "3. 300 requests after a server-side revocation -> {} 401s absorbed by replay, {} token fetch(es)",
        report.absorbed_401.load(Relaxed),
        stats.fetches - fetches_before
    );

    let errors = report.errors.load(Relaxed);
    println!("\nrequests sent        {}", report.requests.load(Relaxed));
    println!("tokens fetched       {}", stats.fetches);
    println!("served from cache    {}", stats.hits);
    println!("401s absorbed        {}", report.absorbed_401.load(Relaxed));
    println!("errors surfaced      {errors}");
    if errors > 0 {
        return Err(format!("{errors} requests failed").into());
    }
    Ok(())
}
