//! `cargo run --example replicas`
//!
//! Several replicas of one service, as separate processes, sharing their tokens through Redis.
//! It starts a local `redis-server` on a loopback port (installed by `scripts/install-redis.sh`)
//! and the in-process sandbox, then starts `REPLICAS` copies of itself (default 4), each with
//! a Torus token cache built `with_shared` a `RedisStore`, 50 tasks sending requests through
//! the reqwest middleware. It prints each replica's requests and the tokens it used (as
//! fingerprints), and the cluster's token requests as the sandbox counted them. What it should
//! print, and why, is in docs/replicas.md.
//!
//! It exits non-zero if a request failed, or the cluster fetched more tokens than it used.

#[path = "support/replica.rs"]
mod replica;

use std::collections::BTreeMap;
use std::error::Error;
use std::time::{Duration, Instant};

use replica::{Replica, Setup, count};
use tokenwarden_sandbox::{Gateway, Sandbox, SandboxConfig};
use tokenwarden_test_support::RedisServer;

/// A demo key; a real one comes from the service's secrets (e.g. `openssl rand -hex 32`).
const DEMO_KEY: &str = "3c9f1a7e5b2d8c4f6a0e9b3d7f1c5a8e2b6d0f4a8c2e6b0d4f8a2c6e0b4d8f2a";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    if std::env::var_os(replica::ROLE).is_some() {
        return replica::serve().await;
    }
    let n: usize = std::env::var("REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
        .clamp(1, 16);
    let redis = tokio::task::spawn_blocking(RedisServer::start).await?;
    let lifetime = Duration::from_secs(3);
    let sandbox =
        Sandbox::start_with(SandboxConfig::default().with_token_lifetime(lifetime)).await?;
    println!(
        "redis-server on {} and the sandbox on {}",
        redis.url(),
        sandbox.url()
    );
    let setup = Setup {
        redis: redis.url(),
        torus: sandbox.base_url(Gateway::Torus),
        api: sandbox.api_url(Gateway::Torus, "orders"),
        key: DEMO_KEY.into(),
        lease: Duration::from_secs(2),
        lifetime,
        store_timeout: Duration::from_millis(500),
        tasks: 50,
    };
    let program = std::env::current_exe()?;
    let mut replicas = Vec::new();
    for i in 0..n {
        replicas.push(Replica::start(&program, &format!("replica-{i}"), &setup).await?);
    }
    println!("{n} replica processes, 50 tasks each, 3 s tokens\n");

    // 1. Three tokens' worth of requests.
    for r in &mut replicas {
        r.send("run 4600").await?;
    }
    let mut failed = 0;
    let mut first_use: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &mut replicas {
        let reply = replica::parse(&r.reply().await?);
        let tokens = replica::tokens(&reply);
        failed += count(&reply, "failed");
        println!(
            "{}: {} requests, {} failed, tokens used: {}",
            r.name,
            count(&reply, "requests"),
            count(&reply, "failed"),
            tokens.keys().cloned().collect::<Vec<_>>().join(" ")
        );
        for (fp, at) in tokens {
            first_use.entry(fp).or_default().push(at);
        }
    }
    let fetched = sandbox.stats(Gateway::Torus).token_requests;
    println!(
        "\ncluster: {fetched} token requests for {} tokens used ({} without sharing)",
        first_use.len(),
        fetched as usize * n
    );
    let spreads: Vec<u64> = first_use
        .values()
        .filter(|at| at.len() == n)
        .map(|at| at.iter().max().unwrap_or(&0) - at.iter().min().unwrap_or(&0))
        .collect();
    println!(
        "every replica switched to each new token within (ms): {spreads:?} (the first token: replicas started apart)"
    );

    // 2. A rejection at one replica.
    sandbox.expire_tokens(Gateway::Torus);
    let before = sandbox.stats(Gateway::Torus);
    let started = Instant::now();
    let first = replicas[0].ask("get").await?;
    println!(
        "\nthe API rejects the token: {} got {} (replayed: {}) in {:?}",
        replicas[0].name,
        first["status"],
        first["replayed"],
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ok = first["status"] == "200";
    for r in &mut replicas[1..] {
        let reply = r.ask("get").await?;
        println!(
            "{}: {} (replayed: {}), token {}",
            r.name, reply["status"], reply["replayed"], reply["token"]
        );
        ok &= reply["status"] == "200" && reply["replayed"] == "false";
    }
    let after = sandbox.stats(Gateway::Torus);
    println!(
        "cluster: {} token request and {} 401 for the rejection",
        after.token_requests - before.token_requests,
        after.unauthorized - before.unauthorized
    );
    for r in &mut replicas {
        let stats = r.ask("stats").await?;
        println!(
            "{}: took {} tokens from Redis, fetched {} under a lease, {} without Redis",
            r.name, stats["adopted"], stats["issuer"], stats["direct"]
        );
    }
    for r in replicas {
        r.quit().await?;
    }
    let shared_well = failed == 0
        && ok
        && fetched as usize == first_use.len()
        && after.token_requests - before.token_requests == 1
        && after.unauthorized - before.unauthorized == 1;
    if !shared_well {
        return Err("a request failed, or the cluster fetched more tokens than it used".into());
    }
    Ok(())
}
