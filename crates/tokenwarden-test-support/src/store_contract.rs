//! The contract every [`TokenStore`] keeps, written once: [`store_contract`] runs it against
//! a store, so `MemoryStore`, the Redis store and any other (etcd, Postgres) prove themselves
//! by the same checks.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, SystemTime};

use tokenwarden_core::store::{Install, SharedToken, TokenStore};
use tokenwarden_core::{FetchError, Secret, SharedTokens, Token, TokenCache};

const LONG: Duration = Duration::from_secs(600);

/// A fresh identity per check, so that checks never meet on one key.
fn identity(check: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "contract:{check}:{}:{}",
        std::process::id(),
        N.fetch_add(1, SeqCst)
    )
}

fn token(fence: u64, value: &str, lifetime: Duration) -> SharedToken {
    let now = SystemTime::now();
    SharedToken::new(fence, Secret::new(value), now, now + lifetime)
}

/// Runs the store contract against `store`, panicking with the check that failed:
///
/// 1. **lease**: a free lease is taken with a fencing number; a held one is refused to every
///    owner, the holder included; only the holder renews it; it runs out after its TTL.
/// 2. **fences only grow**: each lease, installed token and take-over gets a number higher
///    than any before it for the key.
/// 3. **release**: only the holder lets go of a lease; anyone may then take it.
/// 4. **install**: only over a lower fencing number (else `Superseded` with the one held),
///    letting go of the installer's lease either way; `load` returns what was installed.
/// 5. **reject**: marks exactly the token with that fencing number, once.
/// 6. **take-over**: a lease held less than `held_for` stays; one held longer is taken, with
///    a new fencing number, and the old holder can neither renew nor let go of it.
/// 7. **expiry**: a token is gone from `load` once its lifetime is over, and is never read as
///    valid for longer than its lifetime.
/// 8. **notices**: a cache sharing through the store drops its token when another replica
///    rejects it, and switches at its next use when a newer one is installed.
///
/// Takes about a second of real time (the expiry checks wait for a short TTL to run out).
///
/// # Panics
///
/// If the store breaks the contract, or a store call fails.
pub async fn store_contract<S: TokenStore + Clone>(store: S) {
    lease(&store).await;
    release(&store).await;
    install(&store).await;
    reject(&store).await;
    take_over(&store).await;
    expiry(&store).await;
    notices(&store).await;
}

async fn lease<S: TokenStore>(store: &S) {
    let key = store.key_for(&identity("lease"));
    let ttl = Duration::from_millis(300);
    let a = store.acquire(&key, "a", ttl).await.unwrap();
    let a = a.expect("1. lease: a free lease is taken");
    assert!(a > 0, "1. lease: fencing numbers start above 0");
    assert_eq!(
        store.acquire(&key, "b", ttl).await.unwrap(),
        None,
        "1. lease: held by a"
    );
    assert_eq!(
        store.acquire(&key, "a", ttl).await.unwrap(),
        None,
        "1. lease: held, even for its holder's next request"
    );
    assert!(
        !store.renew(&key, "b", ttl).await.unwrap(),
        "1. lease: not b's to renew"
    );
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            store.renew(&key, "a", ttl).await.unwrap(),
            "1. lease: renewed by a"
        );
    }
    assert_eq!(
        store.acquire(&key, "b", ttl).await.unwrap(),
        None,
        "1. lease: renewals keep it held past its first TTL"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        !store.renew(&key, "a", ttl).await.unwrap(),
        "1. lease: ran out"
    );
    let b = store.acquire(&key, "b", ttl).await.unwrap();
    let b = b.expect("1. lease: taken once it ran out");
    assert!(b > a, "2. fences only grow: {b} after {a}");
}

async fn release<S: TokenStore>(store: &S) {
    let key = store.key_for(&identity("release"));
    let a = store.acquire(&key, "a", LONG).await.unwrap().unwrap();
    store.release(&key, "b").await.unwrap();
    assert_eq!(
        store.acquire(&key, "b", LONG).await.unwrap(),
        None,
        "3. release: only the holder lets go of a lease"
    );
    store.release(&key, "a").await.unwrap();
    store.release(&key, "a").await.unwrap();
    let b = store.acquire(&key, "b", LONG).await.unwrap();
    let b = b.expect("3. release: let go (twice, harmlessly), it is free");
    assert!(b > a, "2. fences only grow: {b} after {a}");
}

async fn install<S: TokenStore>(store: &S) {
    let key = store.key_for(&identity("install"));
    assert!(
        store.load(&key).await.unwrap().is_none(),
        "4. install: nothing yet"
    );
    let a = store.acquire(&key, "a", LONG).await.unwrap().unwrap();
    store.release(&key, "a").await.unwrap();
    let b = store.acquire(&key, "b", LONG).await.unwrap().unwrap();
    assert_eq!(
        store
            .install(&key, "b", &token(b, "newer", LONG))
            .await
            .unwrap(),
        Install::Installed,
        "4. install: over nothing"
    );
    let held = store.load(&key).await.unwrap().expect("4. install: loaded");
    assert_eq!(
        (held.fence, held.secret.expose(), held.rejected),
        (b, "newer", false)
    );
    assert_eq!(
        store
            .install(&key, "a", &token(a, "older", LONG))
            .await
            .unwrap(),
        Install::Superseded { current: b },
        "4. install: never over a higher fencing number"
    );
    assert_eq!(
        store.load(&key).await.unwrap().unwrap().secret.expose(),
        "newer"
    );
    let c = store.acquire(&key, "c", LONG).await.unwrap();
    let c = c.expect("4. install: the installer's lease was let go");
    assert!(c > b, "2. fences only grow: {c} after installed {b}");
    assert_eq!(
        store
            .install(&key, "c", &token(c, "newest", LONG))
            .await
            .unwrap(),
        Install::Installed
    );
    let d = store.acquire(&key, "d", LONG).await.unwrap().unwrap();
    assert!(d > c, "2. fences only grow: {d} after installed {c}");
}

async fn reject<S: TokenStore>(store: &S) {
    let key = store.key_for(&identity("reject"));
    let f = store.acquire(&key, "a", LONG).await.unwrap().unwrap();
    store
        .install(&key, "a", &token(f, "t", LONG))
        .await
        .unwrap();
    assert!(
        !store.reject(&key, f + 1).await.unwrap(),
        "5. reject: another fencing number marks nothing"
    );
    assert!(!store.load(&key).await.unwrap().unwrap().rejected);
    assert!(store.reject(&key, f).await.unwrap(), "5. reject: marked");
    assert!(!store.reject(&key, f).await.unwrap(), "5. reject: once");
    assert!(
        store.load(&key).await.unwrap().unwrap().rejected,
        "5. reject: loaded so"
    );
}

async fn take_over<S: TokenStore>(store: &S) {
    let key = store.key_for(&identity("take-over"));
    let a = store.acquire(&key, "a", LONG).await.unwrap().unwrap();
    assert_eq!(
        store.take_over(&key, "b", LONG, LONG).await.unwrap(),
        None,
        "6. take-over: a lease held for less than held_for stays"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(store.renew(&key, "a", LONG).await.unwrap());
    let b = store
        .take_over(&key, "b", LONG, Duration::from_millis(50))
        .await
        .unwrap();
    let b = b.expect("6. take-over: held longer than held_for (renewals do not count)");
    assert!(b > a, "2. fences only grow: {b} after {a}");
    assert!(
        !store.renew(&key, "a", LONG).await.unwrap(),
        "6. take-over: not a's any more"
    );
    store.release(&key, "a").await.unwrap();
    assert_eq!(
        store.acquire(&key, "c", LONG).await.unwrap(),
        None,
        "6. take-over: the old holder cannot let go of it"
    );
    let free = store.key_for(&identity("take-over-free"));
    assert!(
        store
            .take_over(&free, "b", LONG, LONG)
            .await
            .unwrap()
            .is_some(),
        "6. take-over: a free lease is taken as acquire would"
    );
}

async fn expiry<S: TokenStore>(store: &S) {
    let key = store.key_for(&identity("expiry"));
    let f = store.acquire(&key, "a", LONG).await.unwrap().unwrap();
    let lifetime = Duration::from_millis(400);
    store
        .install(&key, "a", &token(f, "short", lifetime))
        .await
        .unwrap();
    let held = store
        .load(&key)
        .await
        .unwrap()
        .expect("7. expiry: there while it lasts");
    assert!(
        held.remaining() <= lifetime,
        "7. expiry: {:?} left",
        held.remaining()
    );
    tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
    assert!(
        store.load(&key).await.unwrap().is_none(),
        "7. expiry: gone once it is over"
    );
    // A token stamped by a clock 30 s ahead is still valid for its lifetime at most.
    let key = store.key_for(&identity("expiry-skew"));
    let f = store.acquire(&key, "a", LONG).await.unwrap().unwrap();
    let ahead = SystemTime::now() + Duration::from_secs(30);
    let skewed = SharedToken::new(f, Secret::new("t"), ahead, ahead + Duration::from_secs(60));
    store.install(&key, "a", &skewed).await.unwrap();
    let held = store.load(&key).await.unwrap().unwrap();
    assert!(
        held.remaining() <= Duration::from_secs(60),
        "7. expiry: a token is never valid for longer than its lifetime ({:?})",
        held.remaining()
    );
}

async fn notices<S: TokenStore + Clone>(store: &S) {
    let name = identity("notices");
    let shared = SharedTokens::builder(store.clone())
        .with_poll_interval(Duration::from_millis(50))
        .build();
    let cache = TokenCache::builder(|| async {
        Ok::<_, FetchError>(Token::new("mine").with_expires_in(LONG))
    })
    .with_shared(&shared, &name)
    .build()
    .unwrap();
    cache.get().await.unwrap();
    let key = store.key_for(&name);
    let fence = store
        .load(&key)
        .await
        .unwrap()
        .expect("8. notices: the cache shared its token")
        .fence;
    // Another replica sees it rejected.
    assert!(store.reject(&key, fence).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while cache.cached().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "8. notices: a rejection by another replica reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another replica installs a newer token: the cache takes it at its next use.
    cache.get().await.unwrap();
    let held = store.load(&key).await.unwrap().unwrap().fence;
    let newer = store
        .take_over(&key, "other", LONG, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(newer > held);
    store
        .install(&key, "other", &token(newer, "theirs", LONG))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let got = cache.get().await.unwrap();
        if crate::secret(&got) == "theirs" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "8. notices: an install by another replica reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
