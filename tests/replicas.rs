//! Replicas as real processes sharing tokens through a real Redis, counted at the sandbox.
//!
//! This binary is its own harness: run plainly it starts `redis-server` (from PATH) and the
//! sandbox, then starts copies of itself as replica processes (see
//! `examples/support/replica.rs`) and checks what the sandbox saw in each scenario.

#[path = "../examples/support/replica.rs"]
mod replica;

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::time::{Duration, Instant};

use replica::{Replica, Setup, count};
use tokenwarden_sandbox::{Fault, Gateway, Sandbox, SandboxConfig};
use tokenwarden_test_support::RedisServer;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;
type Scenario = std::pin::Pin<Box<dyn Future<Output = Result>>>;
type Named = (&'static str, fn() -> Scenario);

const KEY: &str = "8f3a6c1e9b2d4f7a0c5e8b1d3f6a9c2e4b7d0f3a6c9e2b5d8f1a4c7e0b3d6f9a";

struct Cluster {
    redis: RedisServer,
    sandbox: Sandbox,
    replicas: Vec<Replica>,
}

impl Cluster {
    async fn start(n: usize, lifetime: Duration, lease: Duration) -> Result<Self> {
        let redis = RedisServer::start();
        let sandbox =
            Sandbox::start_with(SandboxConfig::default().with_token_lifetime(lifetime)).await?;
        let setup = Setup {
            redis: redis.url(),
            torus: sandbox.base_url(Gateway::Torus),
            api: sandbox.api_url(Gateway::Torus, "orders"),
            key: KEY.into(),
            lease,
            lifetime,
            // Less than a third of the lease (the builder checks), generous for a busy machine.
            store_timeout: lease / 4,
            tasks: 50,
        };
        let program = std::env::current_exe()?;
        let mut replicas = Vec::new();
        for i in 0..n {
            replicas.push(Replica::start(&program, &format!("r{i}"), &setup).await?);
        }
        Ok(Self {
            redis,
            sandbox,
            replicas,
        })
    }

    fn token_requests(&self) -> u64 {
        self.sandbox.stats(Gateway::Torus).token_requests
    }

    /// Waits (up to 10 s) until the sandbox has seen `n` token requests.
    async fn wait_for_token_requests(&self, n: u64) -> Result {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.token_requests() < n {
            if Instant::now() >= deadline {
                return Err(format!("{} token requests, not {n}", self.token_requests()).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn unauthorized(&self) -> u64 {
        self.sandbox.stats(Gateway::Torus).unauthorized
    }

    /// `run <ms>` on every replica at once; their answers.
    async fn run_all(&mut self, ms: u64) -> Result<Vec<BTreeMap<String, String>>> {
        for r in &mut self.replicas {
            r.send(&format!("run {ms}")).await?;
        }
        let mut replies = Vec::new();
        for r in &mut self.replicas {
            replies.push(replica::parse(&r.reply().await?));
        }
        Ok(replies)
    }

    async fn stop(self) -> Result {
        for r in self.replicas {
            r.quit().await?;
        }
        Ok(())
    }
}

/// 4 replicas x 50 tasks on one key, for as long as three tokens last: three token requests
/// in all (each replica alone would make three).
async fn one_fetch_per_token_across_replicas() -> Result {
    // 3 s tokens: the cache keeps 2.5 s of each (a 0.5 s skew margin) and refreshes 70-80 %
    // into that, so tokens are replaced every 1.75-2 s; 4.6 s needs exactly three.
    let mut cluster = Cluster::start(4, Duration::from_secs(3), Duration::from_secs(2)).await?;
    let replies = cluster.run_all(4_600).await?;
    let mut first_use: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut requests, mut failed) = (0, 0);
    for reply in &replies {
        requests += count(reply, "requests");
        failed += count(reply, "failed");
        for (fp, at) in replica::tokens(reply) {
            first_use.entry(fp).or_default().push(at);
        }
    }
    let fetches = cluster.token_requests();
    println!(
        "  {requests} requests from 4 replicas x 50 tasks, {failed} failed; {fetches} token requests; {} distinct tokens",
        first_use.len()
    );
    // How long after the first replica used a new token the last one did (the first token
    // excepted: replicas started at slightly different times).
    let mut spreads: Vec<u64> = first_use
        .values()
        .filter(|at| at.len() == 4)
        .map(|at| at.iter().max().unwrap() - at.iter().min().unwrap())
        .collect();
    spreads.sort_unstable();
    let t0 = first_use.values().flatten().min().copied().unwrap_or(0);
    let mut firsts: Vec<u64> = first_use
        .values()
        .map(|at| at.iter().min().unwrap() - t0)
        .collect();
    firsts.sort_unstable();
    println!(
        "  tokens first used at (ms from the first): {firsts:?}; 401s: {}; replayed: {}",
        cluster.unauthorized(),
        replies.iter().map(|r| count(r, "replayed")).sum::<u64>()
    );
    println!("  every replica switched to a new token within (ms, per token, sorted): {spreads:?}");
    for r in &mut cluster.replicas {
        let stats = r.ask("stats").await?;
        println!("  {}: {stats:?}", r.name);
    }
    assert_eq!(failed, 0, "no request failed");
    assert_eq!(fetches, 3, "one token request per token, cluster-wide");
    assert_eq!(
        first_use.len(),
        3,
        "every replica used the same three tokens"
    );
    assert!(first_use.values().all(|at| at.len() == 4), "{first_use:?}");
    assert_eq!(cluster.unauthorized(), 0);
    cluster.stop().await
}

/// A 401 at one replica: one refresh cluster-wide, and the others, told first, send no
/// request with the rejected token.
async fn a_rejection_at_one_replica_reaches_the_others() -> Result {
    let mut cluster = Cluster::start(4, Duration::from_secs(600), Duration::from_secs(2)).await?;
    let mut warm = BTreeSet::new();
    for r in &mut cluster.replicas {
        let reply = r.ask("get").await?;
        assert_eq!(reply["status"], "200");
        warm.insert(reply["token"].clone());
    }
    assert_eq!((cluster.token_requests(), warm.len()), (1, 1));
    cluster.sandbox.expire_tokens(Gateway::Torus);
    let started = Instant::now();
    let first = cluster.replicas[0].ask("get").await?;
    let took = started.elapsed();
    assert_eq!(
        (first["status"].as_str(), first["replayed"].as_str()),
        ("200", "true")
    );
    // The notice travels while replica 0 answers; give it a moment on a loaded machine.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for r in &mut cluster.replicas[1..] {
        let reply = r.ask("get").await?;
        assert_eq!(reply["status"], "200", "{}", r.name);
        assert_eq!(reply["replayed"], "false", "{}: no 401 of its own", r.name);
        assert_eq!(reply["token"], first["token"], "{}", r.name);
    }
    println!(
        "  401 at one replica: rejected, refreshed and replayed in {took:?}; {} token requests in all, {} 401s",
        cluster.token_requests(),
        cluster.unauthorized()
    );
    assert_eq!(
        cluster.token_requests(),
        2,
        "one refresh for the rejected token"
    );
    assert_eq!(
        cluster.unauthorized(),
        1,
        "only the first replica's request saw the 401"
    );
    cluster.stop().await
}

/// Redis killed mid-run and started again (empty): no request fails, and token requests stay
/// bounded (one per replica while it is down, when the tokens are rejected then).
async fn redis_killed_and_restarted_mid_run() -> Result {
    let mut cluster = Cluster::start(4, Duration::from_secs(600), Duration::from_secs(2)).await?;
    for r in &mut cluster.replicas {
        r.send("run 3000").await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cluster.token_requests();
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every token rejected while Redis is down: each replica refreshes on its own.
    cluster.sandbox.expire_tokens(Gateway::Torus);
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.redis.restart();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The outage's fetches (a replica's first store call may wait out the store timeout,
    // 1 s here, before it fetches on its own).
    let back = cluster.token_requests();
    let during = back - before;
    // Rejected again with Redis back.
    cluster.sandbox.expire_tokens(Gateway::Torus);
    let mut failed = 0;
    let mut requests = 0;
    for r in &mut cluster.replicas {
        let reply = replica::parse(&r.reply().await?);
        failed += count(&reply, "failed");
        requests += count(&reply, "requests");
    }
    let after = cluster.token_requests() - back;
    let mut fallbacks = 0;
    for r in &mut cluster.replicas {
        fallbacks += count(&r.ask("stats").await?, "direct");
    }
    println!(
        "  {requests} requests, {failed} failed; token requests: {before} before, {during} for the outage, {after} for a rejection right after Redis came back ({fallbacks} fetched without Redis in all)"
    );
    assert_eq!(failed, 0, "Redis trouble never reaches a request");
    assert_eq!(before, 1);
    assert!(
        (1..=4).contains(&during),
        "at most one per replica: {during}"
    );
    assert!(after <= 4, "bounded after the restart: {after}");
    // Rejoined: a rejection now costs one token request for the whole cluster again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rejoined = cluster.token_requests();
    cluster.sandbox.expire_tokens(Gateway::Torus);
    let mut tokens = BTreeSet::new();
    for r in &mut cluster.replicas {
        let reply = r.ask("get").await?;
        assert_eq!(reply["status"], "200", "{}", r.name);
        tokens.insert(reply["token"].clone());
    }
    let rejoined = cluster.token_requests() - rejoined;
    println!(
        "  rejoined: a rejection after the outage cost {rejoined} token request(s), {} token(s) in use",
        tokens.len()
    );
    assert_eq!((rejoined, tokens.len()), (1, 1), "shared again");
    cluster.stop().await
}

/// The lease holder killed with SIGKILL mid-fetch: another replica takes over once the lease
/// runs out; and a holder whose lease ran out mid-fetch cannot install its older token.
async fn a_lease_holder_killed_or_late() -> Result {
    let lease = Duration::from_secs(1);
    let mut cluster = Cluster::start(3, Duration::from_secs(600), lease).await?;
    // The first token request hangs for 5 s: replica 0 takes the lease and waits on it.
    cluster
        .sandbox
        .inject(Gateway::Torus, Fault::Slow(Duration::from_secs(5)), 1);
    cluster.replicas[0].send("get").await?;
    cluster.wait_for_token_requests(1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.replicas[0].kill().await?;
    let started = Instant::now();
    let reply = cluster.replicas[1].ask("get").await?;
    let took = started.elapsed();
    assert_eq!(reply["status"], "200");
    println!(
        "  lease holder killed 300 ms into its fetch: replica 1 served after {took:?} (lease TTL {lease:?})"
    );
    // At most a lease (renewed once, a third of it, before the kill) and a poll, and slack.
    assert!(
        took <= lease + lease / 3 + Duration::from_millis(550),
        "within the lease TTL: {took:?}"
    );
    let other = cluster.replicas[2].ask("get").await?;
    assert_eq!(other["token"], reply["token"]);
    assert_eq!(
        cluster.token_requests(),
        2,
        "the dead holder's and the takeover's"
    );

    // A holder frozen mid-fetch (SIGSTOP: a VM or the process paused) cannot renew its lease.
    // Replica 2 takes over and installs a newer token; when the holder goes on, its older
    // token is refused by the fence.
    cluster.sandbox.expire_tokens(Gateway::Torus);
    cluster
        .sandbox
        .inject(Gateway::Torus, Fault::Slow(Duration::from_millis(1_000)), 1);
    let asked = cluster.token_requests();
    cluster.replicas[1].send("get").await?;
    // Frozen once its slow fetch is under way (it holds the lease).
    cluster.wait_for_token_requests(asked + 1).await?;
    cluster.replicas[1].freeze(true)?;
    let newer = cluster.replicas[2].ask("get").await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.replicas[1].freeze(false)?;
    let late = replica::parse(&cluster.replicas[1].reply().await?);
    assert_eq!(
        (newer["status"].as_str(), late["status"].as_str()),
        ("200", "200")
    );
    assert_eq!(
        late["token"], newer["token"],
        "the late holder took the newer token"
    );
    let stats = cluster.replicas[1].ask("stats").await?;
    println!(
        "  a holder frozen past its lease: its token refused by the fence (superseded={})",
        stats["superseded"]
    );
    assert_eq!(stats["superseded"], "1");
    let mut rest = cluster.replicas.split_off(1);
    cluster.replicas.clear();
    for r in rest.drain(..) {
        r.quit().await?;
    }
    Ok(())
}

fn main() -> Result {
    if std::env::var_os(replica::ROLE).is_some() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(replica::serve());
    }
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scenarios: [Named; 4] = [
        ("one fetch per token across replicas", || {
            Box::pin(one_fetch_per_token_across_replicas())
        }),
        ("a rejection at one replica reaches the others", || {
            Box::pin(a_rejection_at_one_replica_reaches_the_others())
        }),
        ("Redis killed and restarted mid-run", || {
            Box::pin(redis_killed_and_restarted_mid_run())
        }),
        ("a lease holder killed or late", || {
            Box::pin(a_lease_holder_killed_or_late())
        }),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, scenario) in scenarios {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("replicas: {name}");
        let started = Instant::now();
        runtime.block_on(scenario())?;
        println!("replicas: {name} ... ok ({:?})", started.elapsed());
    }
    Ok(())
}
