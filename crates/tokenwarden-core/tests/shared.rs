//! Tokens shared by replicas through a store: several `SharedTokens` on one `MemoryStore`
//! behave as replicas on one Redis. Asserted by counts at the issuer, on tokio's paused clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokenwarden_core::store::{Install, Notices, SharedToken, StoreError, StoreKey, TokenStore};
use tokenwarden_core::{
    ConfigError, FetchError, KeyedCache, MemoryStore, Secret, SharedTokens, Token, TokenCache,
    TokenCacheBuilder,
};
use tokenwarden_test_support::{CountingIssuer, secret};
use tokio::time::{Instant, sleep};

const LIFETIME: Duration = Duration::from_secs(100);

fn replica_with(shared: &SharedTokens, issuer: &CountingIssuer) -> TokenCacheBuilder {
    TokenCache::builder(issuer.source()).with_shared(shared, "merchant-42")
}

fn replicas(
    store: &MemoryStore,
    issuer: &CountingIssuer,
    n: usize,
) -> Vec<(SharedTokens, TokenCache)> {
    (0..n)
        .map(|_| {
            let shared = SharedTokens::new(store.clone());
            let cache = replica_with(&shared, issuer).build().unwrap();
            (shared, cache)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn four_replicas_of_fifty_tasks_fetch_once_per_token_lifetime() {
    let store = MemoryStore::new();
    let issuer = CountingIssuer::up()
        .with_lifetime(LIFETIME)
        .with_delay(Duration::from_millis(50));
    let replicas = replicas(&store, &issuer, 4);
    // 200 s of 100 s tokens refreshed 70-80 % into their life: three tokens are needed.
    let end = Instant::now() + Duration::from_secs(200);
    let mut tasks = Vec::new();
    for (r, (_, cache)) in replicas.iter().enumerate() {
        for _ in 0..50 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = HashSet::new();
                let mut gets = 0;
                while Instant::now() < end {
                    let snapshot = cache.get().await.expect("every request gets a token");
                    seen.insert(secret(&snapshot));
                    gets += 1;
                    sleep(Duration::from_millis(500)).await;
                }
                (r, seen, gets)
            }));
        }
    }
    let mut all = HashSet::new();
    let mut gets = 0;
    for task in tasks {
        let (_, seen, n) = task.await.unwrap();
        gets += n;
        all.extend(seen);
    }
    assert_eq!(
        issuer.calls(),
        3,
        "4 replicas x 50 tasks over 200 s of 100 s tokens: one issuer call per token"
    );
    assert_eq!(
        all.len(),
        3,
        "every replica used the same three tokens: {all:?}"
    );
    assert!(gets >= 200 * 400 - 200, "{gets} gets");
    let leases: u64 = replicas.iter().map(|(s, _)| s.stats().leases).sum();
    let adopted: u64 = replicas.iter().map(|(s, _)| s.stats().adopted).sum();
    let direct: u64 = replicas.iter().map(|(s, _)| s.stats().direct_fetches).sum();
    assert_eq!((leases, direct), (3, 0));
    assert!(
        adopted >= 9,
        "each other replica took each token from the store: {adopted}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejection_at_one_replica_costs_one_fetch_and_the_others_drop_that_token_at_once() {
    let store = MemoryStore::new();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let replicas = replicas(&store, &issuer, 4);
    for (_, cache) in &replicas {
        assert_eq!(secret(&cache.get().await.unwrap()), "tok-1");
    }
    assert_eq!(issuer.calls(), 1);
    let rejected = replicas[0].1.get().await.unwrap();
    assert!(replicas[0].1.invalidate(rejected.id()));
    // The notice arrives with the rejection sent (in the background).
    tokio::task::yield_now().await;
    sleep(Duration::from_millis(1)).await;
    for (_, cache) in &replicas[1..] {
        assert!(
            cache.cached().is_none(),
            "the rejected token is dropped before this replica sends it"
        );
    }
    for (_, cache) in &replicas {
        assert_eq!(secret(&cache.get().await.unwrap()), "tok-2");
    }
    // A late rejection of the old token, at another replica, changes nothing.
    assert!(!replicas[2].1.invalidate(rejected.id()));
    sleep(Duration::from_millis(10)).await;
    for (_, cache) in &replicas {
        assert_eq!(secret(&cache.get().await.unwrap()), "tok-2");
    }
    assert_eq!(
        issuer.calls(),
        2,
        "one refresh for the rejected token, cluster-wide"
    );
    assert_eq!(replicas[0].0.stats().rejections_sent, 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_fetched_at_one_replica_reaches_the_others_at_their_next_use() {
    let store = MemoryStore::new();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let replicas = replicas(&store, &issuer, 2);
    for (_, cache) in &replicas {
        cache.get().await.unwrap();
    }
    // Replica 0 refreshes (say, its refresh-ahead came first): replica 1 hears of it and
    // switches at its next use, long before its own refresh point, without an issuer call.
    sleep(Duration::from_secs(85)).await;
    assert_eq!(secret(&replicas[0].1.get().await.unwrap()), "tok-1");
    sleep(Duration::from_millis(100)).await;
    assert_eq!(secret(&replicas[0].1.get().await.unwrap()), "tok-2");
    let _ = replicas[1].1.get().await.unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(secret(&replicas[1].1.get().await.unwrap()), "tok-2");
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stale_writer_cannot_install_over_a_newer_token() {
    let store = MemoryStore::new();
    let key = store.key_for("merchant-42");
    let ttl = Duration::from_secs(1);
    let a = store.acquire(&key, "a", ttl).await.unwrap().expect("free");
    assert_eq!(
        store.acquire(&key, "b", ttl).await.unwrap(),
        None,
        "held by a"
    );
    sleep(Duration::from_secs(2)).await;
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
        Install::Superseded { current: b }
    );
    let held = store.load(&key).await.unwrap().unwrap();
    assert_eq!((held.fence, held.secret.expose()), (b, "newer"));
    // A rejection of the older token does not touch the newer one.
    assert!(!store.reject(&key, a).await.unwrap());
    assert!(store.reject(&key, b).await.unwrap());
    assert!(!store.reject(&key, b).await.unwrap(), "marked once");
    // The next lease's number is above every number installed.
    let c = store.acquire(&key, "c", ttl).await.unwrap().unwrap();
    assert!(c > b);
}

/// A replica whose issuer takes `delay` to mint `value`, sharing through `store`.
fn slow_replica(
    store: impl TokenStore,
    delay: Duration,
    value: &'static str,
) -> (SharedTokens, TokenCache, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let source = move || {
        counted.fetch_add(1, SeqCst);
        async move {
            sleep(delay).await;
            Ok::<_, FetchError>(Token::new(value).with_expires_in(LIFETIME))
        }
    };
    let shared = SharedTokens::builder(store)
        .with_lease_ttl(Duration::from_secs(2))
        .build();
    let cache = TokenCache::builder(source)
        .with_shared(&shared, "merchant-42")
        .with_fetch_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    (shared, cache, calls)
}

#[tokio::test(start_paused = true)]
async fn a_slow_lease_holder_renews_its_lease_and_the_others_wait_for_its_token() {
    let store = MemoryStore::new();
    // An 8 s fetch under a 2 s lease: renewed every 2/3 s, never taken over.
    let (_, a, a_calls) = slow_replica(store.clone(), Duration::from_secs(8), "slow");
    let (_, b, b_calls) = slow_replica(store.clone(), Duration::ZERO, "quick");
    let a_get = tokio::spawn(async move { a.get().await.map(|s| secret(&s)) });
    sleep(Duration::from_millis(10)).await;
    let started = Instant::now();
    assert_eq!(secret(&b.get().await.unwrap()), "slow");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(7_990),
        "b waited for a's token"
    );
    assert_eq!(a_get.await.unwrap().unwrap(), "slow");
    assert_eq!(
        (a_calls.load(SeqCst), b_calls.load(SeqCst)),
        (1, 0),
        "one issuer call"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_cut_off_mid_fetch_is_taken_over_after_the_lease_ttl_and_its_late_token_is_fenced_off()
 {
    let store = MemoryStore::new();
    let cut_off = Troubled {
        store: store.clone(),
        renewals_lost: true,
        ..Troubled::default()
    };
    let (sa, a, a_calls) = slow_replica(cut_off, Duration::from_secs(8), "late");
    let (_, b, b_calls) = slow_replica(store.clone(), Duration::ZERO, "newer");
    let started = Instant::now();
    let a_get = tokio::spawn(async move { a.get().await.map(|s| (secret(&s), a)) });
    sleep(Duration::from_millis(10)).await;
    // b waits for a's lease, then takes over once it runs out unrenewed.
    let token = b.get().await.unwrap();
    let took = started.elapsed();
    assert_eq!(secret(&token), "newer");
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_millis(2_300),
        "taken over within the lease TTL plus one poll: {took:?}"
    );
    // a's token comes in late: the fence refuses it, and a takes the newer one.
    let (a_secret, a) = a_get.await.unwrap().unwrap();
    assert_eq!(a_secret, "newer", "a took b's token, not its own late one");
    assert_eq!(sa.stats().superseded, 1);
    assert_eq!((a_calls.load(SeqCst), b_calls.load(SeqCst)), (1, 1));
    let held = store
        .load(&store.key_for("merchant-42"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.secret.expose(), "newer");
    assert_eq!(secret(&a.get().await.unwrap()), "newer");
}

/// A store that answers, fails, or never answers, as switched (also: only from the first
/// lease on, or with another replica's token installed just before the first lease); or one
/// whose lease renewals never get through (a holder cut off from the store, or frozen, while
/// it fetches).
#[derive(Clone, Default)]
struct Troubled {
    store: MemoryStore,
    mode: Arc<AtomicU8>,
    renewals_lost: bool,
    /// Renewals to fail (with an error) before they get through again.
    renewals_failing: Arc<AtomicUsize>,
}

const WORKS: u8 = 0;
const FAILS: u8 = 1;
const HANGS: u8 = 2;
const HANGS_AFTER_A_LEASE: u8 = 3;
const OVERTAKEN_AT_THE_FIRST_LEASE: u8 = 4;

impl Troubled {
    async fn gate(&self) -> Result<(), StoreError> {
        match self.mode.load(SeqCst) {
            WORKS | HANGS_AFTER_A_LEASE | OVERTAKEN_AT_THE_FIRST_LEASE => Ok(()),
            FAILS => Err(StoreError::Unavailable("connection refused".into())),
            _ => std::future::pending().await,
        }
    }
}

#[async_trait]
impl TokenStore for Troubled {
    fn key_for(&self, identity: &str) -> StoreKey {
        self.store.key_for(identity)
    }
    async fn load(&self, key: &StoreKey) -> Result<Option<SharedToken>, StoreError> {
        self.gate().await?;
        self.store.load(key).await
    }
    async fn acquire(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.gate().await?;
        if self
            .mode
            .compare_exchange(OVERTAKEN_AT_THE_FIRST_LEASE, WORKS, SeqCst, SeqCst)
            .is_ok()
        {
            // Another replica installs its token (and lets go of its lease) just before this
            // lease: between this replica's look at the store and its lease.
            let fence = self.store.acquire(key, "other", ttl).await?.unwrap();
            let now = SystemTime::now();
            let token = SharedToken::new(fence, Secret::new("other"), now, now + LIFETIME);
            assert_eq!(
                self.store.install(key, "other", &token).await?,
                Install::Installed
            );
        }
        let fence = self.store.acquire(key, owner, ttl).await;
        // From the lease on, the store stops answering.
        let _ = self
            .mode
            .compare_exchange(HANGS_AFTER_A_LEASE, HANGS, SeqCst, SeqCst);
        fence
    }
    async fn take_over(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
        held_for: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.gate().await?;
        self.store.take_over(key, owner, ttl, held_for).await
    }
    async fn install(
        &self,
        key: &StoreKey,
        owner: &str,
        token: &SharedToken,
    ) -> Result<Install, StoreError> {
        self.gate().await?;
        self.store.install(key, owner, token).await
    }
    async fn renew(&self, key: &StoreKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.gate().await?;
        if self
            .renewals_failing
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable("connection reset".into()));
        }
        if self.renewals_lost {
            return Ok(false);
        }
        self.store.renew(key, owner, ttl).await
    }
    async fn release(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError> {
        self.gate().await?;
        self.store.release(key, owner).await
    }
    async fn reject(&self, key: &StoreKey, fence: u64) -> Result<bool, StoreError> {
        self.gate().await?;
        self.store.reject(key, fence).await
    }
    fn listen(&self, notices: Notices) {
        self.store.listen(notices);
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_fails_or_hangs_costs_a_request_no_more_than_the_store_timeout() {
    let store = Troubled::default();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let shared = SharedTokens::builder(store.clone())
        .with_store_timeout(Duration::from_millis(250))
        .with_pause_after_trouble(Duration::from_secs(2))
        .build();
    let cache = replica_with(&shared, &issuer).build().unwrap();

    store.mode.store(HANGS, SeqCst);
    let started = Instant::now();
    assert_eq!(secret(&cache.get().await.unwrap()), "tok-1");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(250),
        "one store timeout, then a fetch"
    );
    assert!(shared.is_store_paused());

    // While paused, fetches skip the store entirely: no wait at all.
    let started = Instant::now();
    cache.revoke();
    assert_eq!(secret(&cache.get().await.unwrap()), "tok-2");
    assert_eq!(started.elapsed(), Duration::ZERO);

    store.mode.store(FAILS, SeqCst);
    sleep(Duration::from_secs(3)).await;
    cache.revoke();
    assert_eq!(
        secret(&cache.get().await.unwrap()),
        "tok-3",
        "a failing store is no outage"
    );

    // Back: the replica rejoins at its next fetch after the pause.
    store.mode.store(WORKS, SeqCst);
    sleep(Duration::from_secs(3)).await;
    cache.revoke();
    assert_eq!(secret(&cache.get().await.unwrap()), "tok-4");
    let stats = shared.stats();
    assert_eq!(
        (stats.direct_fetches, stats.leases, stats.installed),
        (3, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.store_errors, 2);
    assert_eq!(issuer.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn keyed_caches_share_one_store_key_per_cache_key() {
    let store = MemoryStore::new();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let keyed = |shared: SharedTokens| {
        let issuer = issuer.clone();
        KeyedCache::<u32>::builder()
            .with_factory(move |merchant| {
                Ok(TokenCache::builder(issuer.source())
                    .with_shared(&shared, format!("merchant-{merchant}")))
            })
            .build()
    };
    let a = keyed(SharedTokens::new(store.clone()));
    let b = keyed(SharedTokens::new(store.clone()));
    let mut tokens = HashSet::new();
    for merchant in 0..10 {
        let from_a = secret(&a.get(&merchant).await.unwrap());
        let from_b = secret(&b.get(&merchant).await.unwrap());
        assert_eq!(
            from_a, from_b,
            "merchant {merchant}: one token for both replicas"
        );
        tokens.insert(from_a);
    }
    assert_eq!((tokens.len(), issuer.calls()), (10, 10));
}

/// A DPoP key known by its thumbprint alone (its proofs are not under test here).
#[derive(Debug)]
struct Key(&'static str);

impl tokenwarden_core::DpopProver for Key {
    fn token_hash(&self, _: &str) -> String {
        "hash".to_owned()
    }

    fn proof(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: Option<&str>,
    ) -> Result<http::HeaderValue, tokenwarden_core::BoxError> {
        Ok(http::HeaderValue::from_static("proof"))
    }

    fn remember_nonce(&self, _: &str, _: &str) {}

    fn thumbprint(&self) -> String {
        self.0.to_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn replicas_share_dpop_bound_tokens_only_with_replicas_holding_the_same_key() {
    let store = MemoryStore::new();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let replica = |key: &'static str| {
        replica_with(&SharedTokens::new(store.clone()), &issuer)
            .with_presentation(tokenwarden_core::Presentation::dpop(Arc::new(Key(key))))
            .build()
            .unwrap()
    };
    let (a1, a2, b) = (replica("key-a"), replica("key-a"), replica("key-b"));
    let from_a1 = secret(&a1.get().await.unwrap());
    assert_eq!(
        secret(&a2.get().await.unwrap()),
        from_a1,
        "the same key: one token"
    );
    let from_b = secret(&b.get().await.unwrap());
    assert_ne!(from_b, from_a1, "a token bound to key A is no use to key B");
    assert_eq!(issuer.calls(), 2);
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let shared = SharedTokens::new(MemoryStore::new());
    let issuer = CountingIssuer::up();
    let single = replica_with(&shared, &issuer).single_use().build();
    assert!(matches!(
        single,
        Err(ConfigError::Invalid {
            name: "with_shared",
            ..
        })
    ));
    let short = replica_with(&shared, &issuer)
        .with_fetch_timeout(Duration::from_secs(5))
        .build();
    assert!(matches!(
        short,
        Err(ConfigError::Invalid {
            name: "fetch_timeout",
            ..
        })
    ));
    let brief = SharedTokens::builder(MemoryStore::new())
        .with_lease_ttl(Duration::from_millis(500))
        .build();
    let lease = TokenCache::builder(issuer.source())
        .with_shared(&brief, "merchant-42")
        .build();
    assert!(matches!(
        lease,
        Err(ConfigError::Invalid {
            name: "lease_ttl",
            ..
        })
    ));
}

#[test]
fn a_shared_token_never_shows_its_secret() {
    let now = SystemTime::now();
    let token = SharedToken::new(7, Secret::new("s3cr3t-value"), now, now + LIFETIME);
    let shown = format!("{token:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("fence: 7"), "{shown}");
}

#[tokio::test(start_paused = true)]
async fn a_token_installed_between_a_look_and_a_lease_is_taken_not_fetched_again() {
    let store = Troubled::default();
    store.mode.store(OVERTAKEN_AT_THE_FIRST_LEASE, SeqCst);
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let shared = SharedTokens::new(store.clone());
    let cache = replica_with(&shared, &issuer).build().unwrap();
    assert_eq!(secret(&cache.get().await.unwrap()), "other");
    assert_eq!(
        issuer.calls(),
        0,
        "the other replica's token, not a second fetch"
    );
    let key = store.key_for("merchant-42");
    assert!(
        store
            .acquire(&key, "third", Duration::from_secs(1))
            .await
            .unwrap()
            .is_some(),
        "the lease taken for nothing was let go"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_that_stops_answering_mid_fetch_costs_one_store_timeout_not_one_per_call() {
    let store = Troubled::default();
    store.mode.store(HANGS_AFTER_A_LEASE, SeqCst);
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let shared = SharedTokens::new(store.clone());
    let cache = replica_with(&shared, &issuer).build().unwrap();
    let started = Instant::now();
    assert_eq!(secret(&cache.get().await.unwrap()), "tok-1");
    // The look after the lease times out (250 ms); the install is not waited for again.
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(issuer.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_cancelled_under_a_lease_lets_the_lease_go_at_once() {
    let store = MemoryStore::new();
    let (_, a, a_calls) = slow_replica(store.clone(), Duration::from_secs(8), "slow");
    let (_, b, b_calls) = slow_replica(store.clone(), Duration::ZERO, "quick");
    let a_get = {
        let a = a.clone();
        tokio::spawn(async move { a.get().await.map(|s| secret(&s)) })
    };
    sleep(Duration::from_millis(10)).await;
    let b_get = tokio::spawn(async move { b.get().await.map(|s| secret(&s)) });
    sleep(Duration::from_secs(1)).await;
    // a's caller goes away (its fetch runs on), then the fetch itself is cancelled
    // mid-await, holding the lease it renews.
    a_get.abort();
    let started = Instant::now();
    a.revoke();
    assert_eq!(b_get.await.unwrap().unwrap(), "quick");
    assert!(
        started.elapsed() <= Duration::from_millis(250),
        "b took the lease over at its next look, not after the TTL: {:?}",
        started.elapsed()
    );
    assert_eq!((a_calls.load(SeqCst), b_calls.load(SeqCst)), (1, 1));
    assert_eq!(
        secret(&a.get().await.unwrap()),
        "quick",
        "a takes b's token"
    );
    assert_eq!(a_calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_holder_stuck_in_its_issuer_call_is_taken_over_once_for_the_fleet() {
    let store = MemoryStore::new();
    let hung = CountingIssuer::up()
        .with_lifetime(LIFETIME)
        .with_delay(Duration::from_secs(3600));
    let holder = replica_with(&SharedTokens::new(store.clone()), &hung)
        .build()
        .unwrap();
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get().await.map(|t| secret(&t)) }
    });
    sleep(Duration::from_millis(100)).await;
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let hubs: Vec<SharedTokens> = (0..3).map(|_| SharedTokens::new(store.clone())).collect();
    let waiting: Vec<_> = hubs
        .iter()
        .map(|shared| {
            let cache = replica_with(shared, &issuer).build().unwrap();
            tokio::spawn(async move { cache.get().await.map(|t| secret(&t)) })
        })
        .collect();
    let started = Instant::now();
    for task in waiting {
        assert_eq!(task.await.unwrap().unwrap(), "tok-1");
    }
    // Half the fetch timeout (10 s) of waiting, then one take-over fetch for all three.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(issuer.calls(), 1);
    let take_overs: u64 = hubs.iter().map(|h| h.stats().take_overs).sum();
    assert_eq!(take_overs, 1);
    assert_eq!(
        holding.await.unwrap().unwrap(),
        "tok-1",
        "the holder's callers too"
    );
}

#[tokio::test(start_paused = true)]
async fn revoke_at_one_replica_reaches_every_replica() {
    let store = MemoryStore::new();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let fleet = replicas(&store, &issuer, 3);
    for (_, cache) in &fleet {
        assert_eq!(secret(&cache.get().await.unwrap()), "tok-1");
    }
    // Credentials rotated at replica 0: the others must not keep serving (or adopting) the
    // token fetched with the old ones.
    fleet[0].1.revoke();
    sleep(Duration::from_millis(50)).await;
    for (i, (_, cache)) in fleet.iter().enumerate() {
        assert_eq!(
            secret(&cache.get().await.unwrap()),
            "tok-2",
            "replica {i} after the revoke"
        );
    }
    assert_eq!(
        issuer.calls(),
        2,
        "one fetch for the fleet after the revoke"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejection_seen_while_the_store_was_down_is_sent_when_it_is_back() {
    let cut_off = Troubled::default();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let shared_a = SharedTokens::new(cut_off.clone());
    let a = replica_with(&shared_a, &issuer).build().unwrap();
    let shared_b = SharedTokens::new(cut_off.store.clone());
    let b = replica_with(&shared_b, &issuer).build().unwrap();
    let token = a.get().await.unwrap();
    assert_eq!(secret(&b.get().await.unwrap()), "tok-1");
    // Replica a loses the store, then sees the token rejected: it cannot tell b.
    cut_off.mode.store(FAILS, SeqCst);
    a.invalidate(token.id());
    sleep(Duration::from_millis(50)).await;
    assert_eq!(secret(&b.get().await.unwrap()), "tok-1", "b has not heard");
    // The store is back: the rejection goes out, and b drops the token.
    cut_off.mode.store(WORKS, SeqCst);
    sleep(Duration::from_secs(40)).await;
    assert_ne!(
        secret(&b.get().await.unwrap()),
        "tok-1",
        "b still serves the token a saw rejected"
    );
    assert!(shared_a.stats().rejections_sent >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_store_contract() {
    tokenwarden_test_support::store_contract(MemoryStore::new()).await;
}

#[test]
fn a_superseded_flight_dropped_late_cannot_let_go_of_the_next_flights_lease() {
    let store = MemoryStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    // The first issuer call never ends; the others take 300 ms.
    let source = {
        let calls = Arc::clone(&calls);
        move || {
            let n = calls.fetch_add(1, SeqCst) + 1;
            async move {
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, FetchError>(Token::new(format!("tok-{n}")).with_expires_in(LIFETIME))
            }
        }
    };
    let replica = |source| {
        let shared = SharedTokens::builder(store.clone())
            .with_lease_ttl(Duration::from_millis(150))
            .with_store_timeout(Duration::from_millis(40))
            .with_poll_interval(Duration::from_millis(20))
            .build();
        let cache = TokenCache::builder(source)
            .with_fetch_timeout(Duration::from_millis(700))
            .with_shared(&shared, "merchant-42")
            .build()
            .unwrap();
        (shared, cache)
    };
    let (_a_shared, a) = replica(source.clone());
    // Replica a's first fetch starts on a runtime its caller then stops driving (the
    // `block_on` model): it holds the lease, and its renewals stop with the runtime.
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gave_up =
        idle.block_on(async { tokio::time::timeout(Duration::from_millis(50), a.get()).await });
    assert!(gave_up.is_err());
    let busy = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // On another runtime, a's caller waits out the stranded fetch (superseding it), and a's
    // next fetch takes the lease again once the first ran out.
    let _ = busy.block_on(a.get());
    let second = busy.spawn({
        let a = a.clone();
        async move { a.get().await.map(|t| secret(&t)) }
    });
    busy.block_on(async { sleep(Duration::from_millis(100)).await });
    assert_eq!(calls.load(SeqCst), 2, "a's second fetch is under way");
    // The idle runtime runs again: the superseded fetch is dropped there, and lets go of
    // the lease it took (not the second fetch's).
    idle.block_on(async { sleep(Duration::from_millis(20)).await });
    // Replica b wants the token meanwhile: it waits for a's second fetch.
    let (b_shared, b) = replica(source);
    let b_token = busy.block_on(b.get()).map(|t| secret(&t)).unwrap();
    let a_token = busy.block_on(second).unwrap().unwrap();
    assert_eq!(
        (a_token.as_str(), b_token.as_str()),
        ("tok-2", "tok-2"),
        "b took a's second token ({} issuer calls, b {:?})",
        calls.load(SeqCst),
        b_shared.stats()
    );
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_fails_once_is_tried_again_and_the_lease_is_kept() {
    let store = MemoryStore::new();
    let flaky = Troubled {
        store: store.clone(),
        renewals_failing: Arc::new(AtomicUsize::new(1)),
        ..Troubled::default()
    };
    // a's issuer takes 6 s; its lease (2 s) must be renewed twice or more meanwhile, and the
    // first renewal fails.
    let (_, a, a_calls) = slow_replica(flaky, Duration::from_secs(6), "from-a");
    let (_, b, b_calls) = slow_replica(store.clone(), Duration::ZERO, "from-b");
    let a_get = tokio::spawn(async move { a.get().await.map(|t| secret(&t)) });
    sleep(Duration::from_millis(100)).await;
    let b_get = tokio::spawn(async move { b.get().await.map(|t| secret(&t)) });
    assert_eq!(
        b_get.await.unwrap().unwrap(),
        "from-a",
        "b waited for a's fetch"
    );
    assert_eq!(a_get.await.unwrap().unwrap(), "from-a");
    assert_eq!((a_calls.load(SeqCst), b_calls.load(SeqCst)), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_took_a_slow_holder_over_takes_the_holders_token_when_it_comes_first() {
    // Both replicas' issuer answers in 6 s; fetch timeout 10 s, so a waiter waits 5 s, takes
    // the lease over and has 5 s left: its own call cannot finish in time, the holder's token
    // (installed at 6 s) must serve it.
    let store = MemoryStore::new();
    let issuer = CountingIssuer::up()
        .with_lifetime(LIFETIME)
        .with_delay(Duration::from_secs(6));
    let holder = replica_with(&SharedTokens::new(store.clone()), &issuer)
        .build()
        .unwrap();
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get().await.map(|t| secret(&t)) }
    });
    sleep(Duration::from_millis(10)).await;
    let taker_hub = SharedTokens::new(store.clone());
    let taker = replica_with(&taker_hub, &issuer).build().unwrap();
    let got = taker.get().await.map(|t| secret(&t));
    assert_eq!(holding.await.unwrap().unwrap(), "tok-1");
    assert_eq!(taker_hub.stats().take_overs, 1);
    assert_eq!(got.unwrap(), "tok-1", "the taker served the holder's token");
}

#[tokio::test(start_paused = true)]
async fn a_revocation_sent_late_rejects_only_tokens_from_before_it() {
    let cut_off = Troubled::default();
    let issuer = CountingIssuer::up().with_lifetime(LIFETIME);
    let shared_a = SharedTokens::new(cut_off.clone());
    let a = replica_with(&shared_a, &issuer).build().unwrap();
    let b = replica_with(&SharedTokens::new(cut_off.store.clone()), &issuer)
        .build()
        .unwrap();
    assert_eq!(secret(&a.get().await.unwrap()), "tok-1");
    assert_eq!(secret(&b.get().await.unwrap()), "tok-1");
    // a revokes while cut off from the store; b then refreshes (tok-1 rejected at b by the
    // API, say) and shares tok-2, fetched after the revocation.
    cut_off.mode.store(FAILS, SeqCst);
    a.revoke();
    sleep(Duration::from_millis(50)).await;
    b.invalidate(b.get().await.unwrap().id());
    assert_eq!(secret(&b.get().await.unwrap()), "tok-2");
    // a's revocation reaches the store later: tok-2 is not what it revoked.
    cut_off.mode.store(WORKS, SeqCst);
    sleep(Duration::from_secs(40)).await;
    let key = cut_off.store.key_for("merchant-42");
    let held = cut_off.store.load(&key).await.unwrap().unwrap();
    assert_eq!(held.secret.expose(), "tok-2");
    assert!(
        !held.rejected,
        "a late revocation rejected a token fetched after it"
    );
    assert_eq!(secret(&b.get().await.unwrap()), "tok-2");
}
