//! `RedisStore` against a real `redis-server` started on a loopback port for each test.

use std::time::{Duration, SystemTime};

use tokenwarden_core::store::{Install, SharedToken, StoreError, StoreKey, TokenStore};
use tokenwarden_core::{Secret, SharedTokens, TokenCache};
use tokenwarden_redis::{EncryptionKey, RedisStore};
use tokenwarden_test_support::{CountingIssuer, HoldingProxy, RedisServer, secret};

const LIFETIME: Duration = Duration::from_secs(600);

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::new([byte; 32])
}

fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::open(&redis.url(), key(7)).unwrap()
}

fn replica(store: &RedisStore, issuer: &CountingIssuer) -> (SharedTokens, TokenCache) {
    let shared = SharedTokens::builder(store.clone())
        .with_poll_interval(Duration::from_millis(50))
        .build();
    let cache = TokenCache::builder(issuer.source())
        .with_shared(&shared, "torus:merchant-42")
        .build()
        .unwrap();
    (shared, cache)
}

/// A raw command on the server, for looking at what it holds.
async fn raw(redis: &RedisServer, cmd: &mut redis::Cmd) -> redis::Value {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn leases_fences_and_rejections_are_atomic_at_the_server() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let key = store.key_for("torus:merchant-42");
    let ttl = Duration::from_millis(300);
    let a = store.acquire(&key, "a", ttl).await.unwrap().expect("free");
    assert_eq!(
        store.acquire(&key, "b", ttl).await.unwrap(),
        None,
        "held by a"
    );
    // Renewed by its holder only: still held after three times its TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.renew(&key, "a", ttl).await.unwrap());
        assert!(
            !store.renew(&key, "b", ttl).await.unwrap(),
            "not b's to renew"
        );
    }
    assert_eq!(
        store.acquire(&key, "b", ttl).await.unwrap(),
        None,
        "renewed by a"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = store
        .acquire(&key, "b", ttl)
        .await
        .unwrap()
        .expect("a's lease ran out");
    assert!(b > a);
    let now = SystemTime::now();
    let token =
        |fence, value: &str| SharedToken::new(fence, Secret::new(value), now, now + LIFETIME);
    assert_eq!(
        store.install(&key, "b", &token(b, "newer")).await.unwrap(),
        Install::Installed
    );
    assert_eq!(
        store.install(&key, "a", &token(a, "older")).await.unwrap(),
        Install::Superseded { current: b },
        "a stale writer is fenced off"
    );
    let held = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (held.fence, held.secret.expose(), held.rejected),
        (b, "newer", false)
    );
    assert!(
        !store.reject(&key, a).await.unwrap(),
        "a late rejection of an older token"
    );
    assert!(store.reject(&key, b).await.unwrap());
    assert!(!store.reject(&key, b).await.unwrap(), "marked once");
    assert!(store.load(&key).await.unwrap().unwrap().rejected);
    // install let go of b's lease: the next one is free, and numbered above every token.
    let c = store
        .acquire(&key, "c", ttl)
        .await
        .unwrap()
        .expect("released by install");
    assert!(c > b);
}

#[tokio::test]
async fn tokens_are_encrypted_at_rest_under_names_that_reveal_nothing() {
    let redis = RedisServer::start();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let (_, cache) = replica(&store(&redis), &issuer);
    let token = secret(&cache.get().await.unwrap());
    let redis::Value::Array(keys) = raw(&redis, redis::cmd("KEYS").arg("*")).await else {
        panic!("KEYS answers an array");
    };
    let names: Vec<String> = keys
        .into_iter()
        .map(|k| redis::from_redis_value(k).unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "token and fence (the lease was let go): {names:?}"
    );
    for name in &names {
        assert!(name.starts_with("tokenwarden:{"), "{name}");
        assert!(
            !name.contains("merchant") && !name.contains("torus"),
            "{name}"
        );
    }
    let token_key = names.iter().find(|n| n.ends_with(":token")).unwrap();
    let redis::Value::BulkString(blob) =
        raw(&redis, redis::cmd("HGET").arg(token_key).arg("blob")).await
    else {
        panic!("a blob is stored");
    };
    assert!(
        !blob.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is not stored in the clear"
    );
    // Its expiry follows the token's.
    let redis::Value::Int(ttl) = raw(&redis, redis::cmd("PTTL").arg(token_key)).await else {
        panic!("PTTL answers a number");
    };
    assert!(ttl > 590_000 && ttl <= 600_000, "{ttl}");

    // A replica given another key cannot read it: it fetches on its own, and says why.
    let other = RedisStore::open(&redis.url(), key(8)).unwrap();
    assert!(
        matches!(
            other.load(&other.key_for("torus:merchant-42")).await,
            Ok(None),
        ),
        "another key names other Redis keys"
    );
    // Same identity, other cipher: the blob copied under the wrong store's name for it.
    let ours = store(&redis).key_for("torus:merchant-42");
    let wrong = RedisStore::open(&redis.url(), key(9)).unwrap();
    let wrong_key = wrong.key_for("torus:merchant-42");
    let _ = raw(
        &redis,
        redis::cmd("COPY")
            .arg(format!("tokenwarden:{{{}}}:token", ours.as_str()))
            .arg(format!("tokenwarden:{{{}}}:token", wrong_key.as_str())),
    )
    .await;
    assert!(matches!(
        wrong.load(&wrong_key).await,
        Err(StoreError::Unreadable(_))
    ));
}

#[tokio::test]
async fn two_processes_worth_of_replicas_fetch_once_and_share_a_rejection() {
    let redis = RedisServer::start();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    // Each replica has its own store, so its own connections and notice listener.
    let (sa, a) = replica(&store(&redis), &issuer);
    let (sb, b) = replica(&store(&redis), &issuer);
    let (ta, tb) = tokio::join!(a.get(), b.get());
    assert_eq!(secret(&ta.unwrap()), secret(&tb.unwrap()));
    assert_eq!(issuer.calls(), 1);
    // a's request is rejected: b hears of it and drops the token before it sends it.
    let rejected = a.get().await.unwrap();
    assert!(a.invalidate(rejected.id()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while b.cached().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rejection reached b"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (ta, tb) = tokio::join!(a.get(), b.get());
    assert_eq!(secret(&ta.unwrap()), "tok-2");
    assert_eq!(secret(&tb.unwrap()), "tok-2");
    assert_eq!(issuer.calls(), 2, "one refresh for both");
    assert_eq!(sa.stats().rejections_sent + sb.stats().rejections_sent, 1);
}

#[tokio::test]
async fn redis_down_at_start_then_up_and_killed_again_never_fails_a_request() {
    let mut redis = RedisServer::start();
    redis.kill();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let shared = SharedTokens::builder(store(&redis))
        .with_pause_after_trouble(Duration::from_millis(200))
        .build();
    let cache = TokenCache::builder(issuer.source())
        .with_shared(&shared, "torus:merchant-42")
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        secret(&cache.get().await.unwrap()),
        "tok-1",
        "Redis down: the replica's own fetch"
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(shared.stats().direct_fetches == 1 && shared.stats().store_errors >= 1);

    redis.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cache.revoke();
    // The connection manager may need a try or two to notice the server is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(cache.get().await.is_ok());
        if shared.stats().installed == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rejoined: {:?}",
            shared.stats()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.revoke();
    }
    redis.kill();
    cache.revoke();
    assert!(cache.get().await.is_ok(), "killed again: still served");
    let calls = issuer.calls();
    assert!(calls <= 1 + 20 + 1, "bounded: {calls}");
}

#[tokio::test]
async fn fences_stay_unique_when_redis_loses_its_data() {
    let mut redis = RedisServer::start();
    let store = store(&redis);
    let key = store.key_for("torus:merchant-42");
    let ttl = Duration::from_millis(200);
    let before = store.acquire(&key, "a", ttl).await.unwrap().unwrap();
    let now = SystemTime::now();
    let token = SharedToken::new(before, Secret::new("before"), now, now + LIFETIME);
    assert_eq!(
        store.install(&key, "a", &token).await.unwrap(),
        Install::Installed
    );
    // A restart without persistence: every key is gone, the fence counter with them.
    redis.restart();
    let mut after = None;
    for _ in 0..20 {
        match store.acquire(&key, "b", ttl).await {
            Ok(fence) => {
                after = fence;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let after = after.expect("the lease after the restart");
    assert!(
        after > before,
        "a fence after the loss ({after}) never repeats one from before it ({before})"
    );
}

/// Acquires the lease for `owner` once Redis answers again (it may be restarting).
async fn acquire_when_up(store: &RedisStore, key: &StoreKey, owner: &str, ttl: Duration) -> u64 {
    for _ in 0..50 {
        if let Ok(Some(fence)) = store.acquire(key, owner, ttl).await {
            return fence;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no lease for {owner}");
}

#[tokio::test]
async fn fences_never_repeat_after_redis_restarts_from_an_older_snapshot() {
    let mut redis = RedisServer::start();
    let store = store(&redis);
    let key = store.key_for("torus:merchant-42");
    let ttl = Duration::from_millis(200);
    let first = acquire_when_up(&store, &key, "a", ttl).await;
    let now = SystemTime::now();
    let token = SharedToken::new(first, Secret::new("first"), now, now + LIFETIME);
    assert_eq!(
        store.install(&key, "a", &token).await.unwrap(),
        Install::Installed
    );
    // Redis's persistence writes a snapshot now; later fences are not in it.
    let snapshot = redis.save_snapshot();
    let mut later = Vec::new();
    for owner in ["b", "c"] {
        let fence = acquire_when_up(&store, &key, owner, ttl).await;
        store.release(&key, owner).await.unwrap();
        later.push(fence);
    }
    // A crash and a restart from that snapshot (or a failover to a replica that missed them).
    redis.restart_from_snapshot(&snapshot);
    let after = acquire_when_up(&store, &key, "d", ttl).await;
    println!("fences: {first} installed, then {later:?}, then {after} after the restore");
    assert!(
        later.iter().all(|&f| after > f),
        "a fence after the restore ({after}) repeats or undercuts one given out before it ({later:?})"
    );
}

#[tokio::test]
async fn odd_bytes_round_trip_and_a_huge_token_is_refused_not_stored() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let key = store.key_for("id with spaces, : and {braces} ü");
    let now = SystemTime::now();
    for (i, value) in ["t\u{0}k\r\n", "ü🎫\u{7f}", "{tokenwarden}:token", " "]
        .iter()
        .enumerate()
    {
        let fence = store.acquire(&key, "a", LIFETIME).await.unwrap().unwrap();
        let token = SharedToken::new(fence, Secret::new(*value), now, now + LIFETIME);
        assert_eq!(
            store.install(&key, "a", &token).await.unwrap(),
            Install::Installed,
            "{i}"
        );
        let held = store.load(&key).await.unwrap().unwrap();
        assert_eq!(held.secret.expose(), *value, "{i}");
    }
    let fence = store.acquire(&key, "a", LIFETIME).await.unwrap().unwrap();
    let huge = SharedToken::new(fence, Secret::new("x".repeat(70_000)), now, now + LIFETIME);
    let refused = store.install(&key, "a", &huge).await.unwrap_err();
    assert!(matches!(refused, StoreError::TooLarge(70_000)));
    assert!(!refused.to_string().contains("xxxx"), "{refused}");
    assert_eq!(
        store.load(&key).await.unwrap().unwrap().secret.expose(),
        " "
    );
}

/// A store that cannot be reached for a while, seen from one replica whose token is dropped
/// again and again (each fetch asks the store): one WARN for the whole episode, naming why.
/// The notice listener of a store opened on a runtime that has ended starts again on the
/// store's next use, on the runtime in use then.
#[test]
fn the_notice_listener_starts_again_after_its_runtime_ended() {
    let redis = RedisServer::start();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer = CountingIssuer::up();
    let (shared, cache) = first.block_on(async { replica(&store(&redis), &issuer) });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        // Its next use (a fetch through the store) brings the listener back...
        let token = cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = shared.stats().notices;
        // ...so a rejection at another replica reaches it.
        let (other_shared, other) = replica(&store(&redis), &issuer);
        let same = other.get().await.unwrap();
        assert_eq!(secret(&same), secret(&token), "taken from the store");
        assert!(other.invalidate(same.id()));
        for _ in 0..40 {
            if shared.stats().notices > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            shared.stats().notices > before,
            "the first replica heard nothing: {:?}",
            shared.stats()
        );
        drop(other_shared);
    });
}

/// Whether any lease is held at the server now.
async fn lease_held(redis: &RedisServer) -> bool {
    match raw(redis, redis::cmd("KEYS").arg("*:lease")).await {
        redis::Value::Array(keys) => !keys.is_empty(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_request_that_reaches_redis_late_is_let_go_not_left_held() {
    let redis = RedisServer::start();
    let target = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = HoldingProxy::start(target).await;
    let slow = RedisStore::open(&format!("redis://{}/", proxy.addr()), key(7)).unwrap();
    // The acquire script known to the server, so that its requests name it by hash.
    let warm = slow.key_for("warm-up");
    let owner = "warm-up";
    assert!(
        slow.acquire(&warm, owner, LIFETIME)
            .await
            .unwrap()
            .is_some()
    );
    slow.release(&warm, owner).await.unwrap();
    let acquire = redis::Script::new(include_str!("../src/lua/acquire.lua"));
    proxy.hold(acquire.get_hash().as_bytes(), Duration::from_millis(800));

    // A replica whose lease request is held past its store timeout (250 ms) fetches on its
    // own; the request reaches Redis 800 ms after it was sent and takes the lease.
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let (shared, cache) = replica(&slow, &issuer);
    assert_eq!(secret(&cache.get().await.unwrap()), "tok-1");
    assert_eq!(proxy.held(), 1);
    assert_eq!(shared.stats().direct_fetches, 1);
    // The replica lets that lease go even though its store is paused after the trouble: the
    // lease is gone soon after the late request took it, not at the end of its 3 s TTL.
    let started = std::time::Instant::now();
    let mut gone_after = None;
    while started.elapsed() < Duration::from_millis(2_500) {
        if !lease_held(&redis).await && started.elapsed() > Duration::from_millis(600) {
            gone_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone_after.is_some(),
        "the late lease was still held 2.5 s later"
    );
    // Another replica then takes the lease at once: no wait for a lease nobody uses.
    let direct = store(&redis);
    let other = CountingIssuer::up().with_lifetime(LIFETIME);
    let (shared_b, cache_b) = replica(&direct, &other);
    cache_b.get().await.unwrap();
    let stats = shared_b.stats();
    assert_eq!((stats.leases, stats.waits), (1, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_lease_holder_costs_the_fleet_one_more_fetch_not_one_per_replica() {
    let redis = RedisServer::start();
    let store = store(&redis);
    // Fetch timeout 5 s: a waiter waits up to 2.5 s for the holder. The store timeout is the
    // default (250 ms): a loaded machine must not turn a slow store call into a fetch.
    let replica = |issuer: &CountingIssuer| {
        let shared = SharedTokens::builder(store.clone())
            .with_lease_ttl(Duration::from_millis(900))
            .with_store_timeout(Duration::from_millis(250))
            .with_poll_interval(Duration::from_millis(50))
            .build();
        let cache = TokenCache::builder(issuer.source())
            .with_fetch_timeout(Duration::from_secs(5))
            .with_shared(&shared, "torus:merchant-42")
            .build()
            .unwrap();
        (shared, cache)
    };
    // Replica 0's issuer call hangs (its connection stuck); it holds the lease and renews it.
    let hung = CountingIssuer::up()
        .with_lifetime(LIFETIME)
        .with_delay(Duration::from_secs(3600));
    let (_shared0, holder) = replica(&hung);
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get().await.map(|t| secret(&t)) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hung.calls(), 1);
    // Three other replicas, whose issuer answers, want the token too.
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(replica(&issuer));
    }
    let waiting: Vec<_> = others
        .iter()
        .map(|(_, cache)| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await.map(|t| secret(&t)) })
        })
        .collect();
    let mut got = Vec::new();
    for task in waiting {
        got.push(task.await.unwrap().expect("a waiter got a token"));
    }
    let held = holding.await.unwrap();
    println!(
        "a hung holder and 3 waiting replicas: {} issuer calls besides the hung one; tokens {got:?}, the holder's callers got {held:?}",
        issuer.calls()
    );
    assert_eq!(
        issuer.calls(),
        1,
        "one replica took the lease over and fetched"
    );
    assert!(got.iter().all(|t| *t == got[0]), "shared: {got:?}");
    assert_eq!(
        held.expect("the holder's callers are served the token that replaced its fetch"),
        got[0]
    );
}

#[tokio::test]
async fn a_shared_tokens_expiry_follows_redis_not_the_writers_clock() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let key = store.key_for("torus:merchant-42");
    // A replica whose clock runs 30 s ahead stamps a 60 s token: issued 30 s from now (by
    // this machine's clock), expiring 90 s from now.
    let ahead = SystemTime::now() + Duration::from_secs(30);
    let fence = store
        .acquire(&key, "ahead", Duration::from_secs(3))
        .await
        .unwrap()
        .unwrap();
    let token = SharedToken::new(
        fence,
        Secret::new("skewed"),
        ahead,
        ahead + Duration::from_secs(60),
    );
    assert_eq!(
        store.install(&key, "ahead", &token).await.unwrap(),
        Install::Installed
    );
    // Redis keeps the token for its lifetime, and every reader counts its expiry from that.
    let redis::Value::Int(ttl) = raw(
        &redis,
        redis::cmd("PTTL").arg(format!("tokenwarden:{{{}}}:token", key.as_str())),
    )
    .await
    else {
        panic!("PTTL answers a number");
    };
    assert!(ttl <= 60_000, "kept {ttl} ms");
    let read = store.load(&key).await.unwrap().unwrap();
    assert!(
        read.remaining() <= Duration::from_secs(60) && read.remaining() > Duration::from_secs(55),
        "read as valid for {:?}, not the writer's 90 s",
        read.remaining()
    );
    assert_eq!(read.lifetime(), Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_the_store_contract() {
    let redis = RedisServer::start();
    tokenwarden_test_support::store_contract(store(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_at_one_replica_reaches_every_replica_through_redis() {
    let redis = RedisServer::start();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    // Three processes' worth: each replica its own store, connections and listener.
    let fleet: Vec<_> = (0..3).map(|_| replica(&store(&redis), &issuer)).collect();
    for (_, cache) in &fleet {
        assert_eq!(secret(&cache.get().await.unwrap()), "tok-1");
    }
    fleet[0].1.revoke();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for (i, (_, cache)) in fleet.iter().enumerate().skip(1) {
        while cache.cached().is_some_and(|t| secret(&t) == "tok-1") {
            assert!(
                std::time::Instant::now() < deadline,
                "replica {i} still serves the revoked token"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for (_, cache) in &fleet {
        assert_eq!(secret(&cache.get().await.unwrap()), "tok-2");
    }
    assert_eq!(
        issuer.calls(),
        2,
        "one fetch for the fleet after the revoke"
    );
}
