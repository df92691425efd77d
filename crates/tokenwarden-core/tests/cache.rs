//! Behaviour of the token cache, asserted by counts, on tokio's paused clock where time matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokenwarden_core::{CacheState, Error, FetchError, Probe, Token, TokenCache, TokenSource};
use tokenwarden_test_support::{CountingIssuer, distinct_tokens, secret, spawn_get, spawn_gets};
use tokio::sync::Semaphore;
use tokio::time::{Instant, advance, sleep};

/// An issuer minting `tok-1`, `tok-2`, ... that live `lifetime`, counting its calls.
fn minting(lifetime: Duration) -> CountingIssuer {
    CountingIssuer::up().with_lifetime(lifetime)
}

fn cache(source: impl TokenSource) -> TokenCache {
    TokenCache::builder(source).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_of_1000_callers_on_an_empty_cache_fetches_once() {
    let issuer = minting(Duration::from_secs(300)).with_delay(Duration::from_millis(20));
    let cache = cache(issuer.source());
    let mut ids = Vec::new();
    for t in spawn_gets(&cache, 1000) {
        ids.push(t.await.unwrap().unwrap().id());
    }
    assert_eq!(issuer.calls(), 1);
    assert!(ids.iter().all(|id| *id == ids[0]));
    let stats = cache.stats();
    assert_eq!(stats.fetches, 1);
    assert_eq!(stats.waits + stats.hits, 1000);
}

#[tokio::test(start_paused = true)]
async fn stampede_on_an_expired_token_fetches_once() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_millis(50));
    let cache = cache(issuer.source());
    let first = cache.get().await.unwrap();
    // Unused since its fetch, it gets no background refresh and lapses.
    advance(Duration::from_secs(61)).await;
    for t in spawn_gets(&cache, 1000) {
        assert_ne!(t.await.unwrap().unwrap().id(), first.id());
    }
    assert_eq!(issuer.calls(), 2, "one fetch for the 1000 callers");
    assert_eq!(cache.stats().refreshes_ahead, 0);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_runs_one_background_fetch_and_no_caller_waits() {
    // 100 s tokens, a 5 s skew: usable life 95 s, advisory window starts between 66.5 and 76 s,
    // mandatory margin at 90 s. The issuer takes 3 s to answer.
    let issuer = minting(Duration::from_secs(100)).with_delay(Duration::from_secs(3));
    let cache = cache(issuer.source());
    let first = cache.get().await.unwrap();
    assert_eq!(issuer.calls(), 1);
    let waits_before = cache.stats().waits;

    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(86) {
        let asked = Instant::now();
        let s = cache.get().await.unwrap();
        assert_eq!(asked.elapsed(), Duration::ZERO, "a caller waited");
        if seen.last() != Some(&s.id()) {
            seen.push(s.id());
        }
        sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(issuer.calls(), 2, "exactly one background refresh");
    assert_eq!(cache.stats().refreshes_ahead, 1);
    assert_eq!(cache.stats().waits, waits_before, "no caller waited");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], first.id());
}

#[tokio::test(start_paused = true)]
async fn cached_in_the_advisory_window_starts_the_refresh_ahead_and_serves_at_once() {
    // What the tower layer calls on its fast path: a use inside the advisory window starts the
    // background refresh, as `get` does; nobody waits for it.
    let issuer = minting(Duration::from_secs(100)).with_delay(Duration::from_secs(3));
    let cache = cache(issuer.source());
    let first = cache.get().await.unwrap();
    advance(Duration::from_secs(80)).await;
    for _ in 0..100 {
        assert_eq!(cache.cached().unwrap().id(), first.id(), "served at once");
    }
    sleep(Duration::from_secs(4)).await;
    assert_eq!(issuer.calls(), 2, "one background refresh for 100 uses");
    assert_eq!(cache.stats().refreshes_ahead, 1);
    assert_ne!(cache.cached().unwrap().id(), first.id());
}

#[tokio::test(start_paused = true)]
async fn past_the_mandatory_margin_callers_wait_for_a_fresh_token() {
    let issuer = minting(Duration::from_secs(100));
    let cache = TokenCache::builder(issuer.source())
        .with_refresh_ahead(0.0, 0.0)
        .build()
        .unwrap();
    let first = cache.get().await.unwrap();
    // No refresh ahead: the token is served until 90 s (stated 100 - skew 5 - margin 5).
    sleep(Duration::from_secs(89)).await;
    assert_eq!(cache.get().await.unwrap().id(), first.id());
    sleep(Duration::from_secs(2)).await;
    assert!(cache.cached().is_none(), "retired at the mandatory margin");
    let second = cache.get().await.unwrap();
    assert_ne!(second.id(), first.id());
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_stated_expiry_gets_the_default_lifetime_and_skew_is_applied() {
    let issuer = CountingIssuer::up().without_expiry();
    let cache = TokenCache::builder(issuer.source())
        .with_default_lifetime(Duration::from_secs(60))
        .with_clock_skew(Duration::from_secs(12))
        .with_mandatory_margin(Duration::from_secs(1))
        .with_refresh_ahead(0.0, 0.0)
        .build()
        .unwrap();
    let first = cache.get().await.unwrap();
    // 60 s default - 12 s skew - 1 s margin = usable until 47 s
    sleep(Duration::from_millis(46_900)).await;
    assert_eq!(cache.get().await.unwrap().id(), first.id());
    sleep(Duration::from_millis(200)).await;
    assert_ne!(cache.get().await.unwrap().id(), first.id());
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn wall_clock_expiry_is_converted_from_the_send_time() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let cache = TokenCache::builder(move || {
        let c = c.clone();
        async move {
            c.fetch_add(1, SeqCst);
            let at = std::time::SystemTime::now() + Duration::from_secs(30);
            Ok(Token::new("jwt").with_expires_at(at))
        }
    })
    .with_refresh_ahead(0.0, 0.0)
    .build()
    .unwrap();
    let first = cache.get().await.unwrap();
    sleep(Duration::from_millis(22_400)).await; // 30 - 5 skew - 2.5 margin (a tenth) = 22.5
    assert_eq!(cache.get().await.unwrap().id(), first.id());
    sleep(Duration::from_millis(200)).await;
    assert_ne!(cache.get().await.unwrap().id(), first.id());
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn invalidate_if_current_storm_fetches_once_and_stale_invalidations_none() {
    let issuer = minting(Duration::from_secs(300)).with_delay(Duration::from_millis(30));
    let cache = cache(issuer.source());
    let rejected = cache.get().await.unwrap().id();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache.invalidate(rejected);
                cache.get().await.unwrap().id()
            })
        })
        .collect();
    let mut fresh = Vec::new();
    for t in tasks {
        fresh.push(t.await.unwrap());
    }
    assert_eq!(
        issuer.calls(),
        2,
        "one initial fetch, one for the whole storm"
    );
    assert!(fresh.iter().all(|id| *id == fresh[0] && *id != rejected));
    let stats = cache.stats();
    assert_eq!(stats.invalidations, 1);
    assert_eq!(stats.coalesced_invalidations, 999);

    // A late 401 for the replaced token changes nothing.
    assert!(!cache.invalidate(rejected));
    assert_eq!(cache.get().await.unwrap().id(), fresh[0]);
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_error_is_shared_by_every_waiter() {
    let issuer = CountingIssuer::up()
        .with_delay(Duration::from_millis(100))
        .with_failures(|_| Some(FetchError::transient("issuer answered 503")));
    let cache = cache(issuer.source());
    for t in spawn_gets(&cache, 200) {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Fetch(_)), "{err}");
        assert!(err.is_retryable());
        assert!(err.chain().contains("issuer answered 503"));
    }
    assert_eq!(issuer.calls(), 1);
    // Right after, the cache backs off instead of calling the issuer again.
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err, Error::BackingOff { .. }), "{err}");
    assert_eq!(issuer.calls(), 1);
    // Walking the chain shows each message once.
    let chain = err.chain();
    for message in [
        "not asking",
        "will be retried with backoff",
        "issuer answered 503",
    ] {
        assert_eq!(
            chain.matches(message).count(),
            1,
            "{message:?} in {chain:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_issuer_sees_bounded_attempts_over_a_minute_one_at_a_time() {
    let issuer = CountingIssuer::up()
        .with_delay(Duration::from_millis(10))
        .with_failures(|_| Some(FetchError::transient("connection refused")));
    let cache = cache(issuer.source());
    // 20 tasks each asking every 10 ms for a simulated minute: 120,000 calls.
    let start = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut errors = 0;
                while start.elapsed() < Duration::from_secs(60) {
                    errors += usize::from(cache.get().await.is_err());
                    sleep(Duration::from_millis(10)).await;
                }
                errors
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap() > 0);
    }
    // base 250 ms doubling to 30 s with jitter: 8 to 11 attempts fit in a minute.
    let attempts = issuer.calls();
    assert!((8..=11).contains(&attempts), "{attempts} attempts");
    assert_eq!(issuer.most_in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_refresh_keeps_serving_the_valid_token_and_retries_with_backoff() {
    let issuer = minting(Duration::from_secs(600))
        .with_failures(|n| (n > 1).then(|| FetchError::transient("503")));
    let cache = TokenCache::builder(issuer.source())
        .with_refresh_ahead(0.2, 0.0)
        .build()
        .unwrap();
    let first = cache.get().await.unwrap();
    // Usable life 595 s: the refresh window runs from 476 s to the mandatory margin at 590 s.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(589) {
        assert_eq!(cache.get().await.unwrap().id(), first.id());
        sleep(Duration::from_secs(1)).await;
    }
    let retries = issuer.calls() - 1;
    // 114 s of window, backoff 0.25 s doubling to 30 s with equal jitter: 10 to 14 tries.
    assert!((10..=14).contains(&retries), "{retries} background retries");
    assert!(cache.stats().fetch_failures as usize == retries);
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_are_terminal_and_remembered() {
    let issuer = CountingIssuer::up().with_failures(|_| {
        Some(FetchError::rejected(
            "issuer answered 401: invalid request token",
        ))
    });
    let cache = TokenCache::builder(issuer.source())
        .with_rejection_hold(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err, Error::Rejected(_)));
    assert!(!err.is_retryable() && err.is_rejected());
    // An application that swallows the error and retries in a tight loop.
    for _ in 0..10_000 {
        let err = cache.get().await.unwrap_err();
        assert!(err.is_rejected() && !err.is_retryable(), "{err}");
    }
    assert_eq!(issuer.calls(), 1);
    advance(Duration::from_secs(5)).await;
    assert!(cache.get().await.is_err());
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_issuer_times_out() {
    let cache = TokenCache::builder(std::future::pending::<Result<Token, FetchError>>)
        .with_fetch_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = cache.get().await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_secs(3)),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn an_absurdly_long_lifetime_is_capped_not_an_overflow() {
    let cache = cache(|| async { Ok(Token::new("forever").with_expires_in(Duration::MAX)) });
    let first = cache.get().await.unwrap();
    sleep(Duration::from_secs(300 * 24 * 3600)).await;
    assert_eq!(cache.get().await.unwrap().id(), first.id());
}

#[tokio::test(start_paused = true)]
async fn an_already_expired_token_is_a_failed_fetch() {
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    let cache = cache(move || async move { Ok(Token::new("old").with_expires_at(past)) });
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExpired { .. }), "{err}");
    assert_eq!(cache.stats().fetch_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_poisons_nothing() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let cache = TokenCache::builder(move || {
        let c = c.clone();
        async move {
            if c.fetch_add(1, SeqCst) == 0 {
                panic!("bug in the source");
            }
            Ok(Token::new("ok").with_expires_in(Duration::from_secs(60)))
        }
    })
    .build()
    .unwrap();
    for w in spawn_gets(&cache, 10) {
        assert!(matches!(w.await.unwrap(), Err(Error::SourcePanicked)));
    }
    advance(Duration::from_secs(1)).await;
    assert_eq!(secret(&cache.get().await.unwrap()), "ok");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_first_caller_does_not_cancel_the_fetch() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_secs(1));
    let cache = cache(issuer.source());
    let first = spawn_get(&cache);
    tokio::task::yield_now().await; // the first caller starts the fetch
    assert_eq!(issuer.calls(), 1);
    let second = spawn_get(&cache);
    tokio::task::yield_now().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let got = second.await.unwrap().unwrap();
    assert_eq!(secret(&got), "tok-1");
    assert_eq!(issuer.calls(), 1);

    // Alone and cancelled, the fetch still completes and is installed.
    cache.revoke();
    let lonely = spawn_get(&cache);
    tokio::task::yield_now().await;
    lonely.abort();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(secret(&cache.cached().expect("installed")), "tok-2");
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn single_use_gives_every_caller_its_own_token() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_millis(5));
    let cache = TokenCache::builder(issuer.source())
        .single_use()
        .build()
        .unwrap();
    let tokens = distinct_tokens(&cache, 100).await;
    assert_eq!(tokens.len(), 100, "a token was handed out twice");
    assert_eq!(issuer.calls(), 100);
    assert!(cache.cached().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_single_use_pool_hides_the_fetch_latency() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_millis(200));
    let cache = TokenCache::builder(issuer.source())
        .with_pool(3)
        .build()
        .unwrap();
    let first = cache.get().await.unwrap(); // waits; starts filling the pool
    sleep(Duration::from_secs(1)).await; // 3 × 200 ms: pool full
    let mut seen = std::collections::HashSet::from([secret(&first)]);
    for _ in 0..3 {
        let asked = Instant::now();
        let s = cache.get().await.unwrap();
        assert_eq!(asked.elapsed(), Duration::ZERO, "served from the pool");
        assert!(seen.insert(secret(&s)));
    }
    // Pooled tokens past their mandatory margin are never handed out.
    sleep(Duration::from_secs(120)).await;
    let s = cache.get().await.unwrap();
    assert!(seen.insert(secret(&s)));
    assert!(s.id().get() > 6, "an expired pooled token was served");
}

#[tokio::test(start_paused = true)]
async fn a_rejection_discards_the_pool_and_a_refill_already_under_way() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_millis(100));
    let cache = TokenCache::builder(issuer.source())
        .with_pool(2)
        .build()
        .unwrap();
    // t=0: tok-1 fetched for the caller, tok-2 for the pool; both arrive at 100 ms, and the
    // refill goes on with tok-3, arriving at 200 ms.
    let rejected = cache.get().await.unwrap();
    assert_eq!(secret(&rejected), "tok-1");
    sleep(Duration::from_millis(50)).await; // t=150: tok-2 pooled, tok-3 in flight
    assert!(cache.invalidate(rejected.id()), "the pool is flushed");
    sleep(Duration::from_secs(1)).await; // tok-3 arrives and is dropped; the pool refills
    let next = secret(&cache.get().await.unwrap());
    assert!(
        next != "tok-2" && next != "tok-3",
        "a pre-rejection token was served: {next}"
    );
}

#[tokio::test(start_paused = true)]
async fn revoke_racing_an_in_flight_fetch_never_installs_the_old_token() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (gate.clone(), calls.clone());
    let cache = cache(move || {
        let (g, c) = (g.clone(), c.clone());
        async move {
            let n = c.fetch_add(1, SeqCst) + 1;
            if n == 1 {
                // the first fetch is held until the test releases it
                g.acquire().await.unwrap().forget();
            }
            Ok(Token::new(format!("minted-{n}")).with_expires_in(Duration::from_secs(60)))
        }
    });
    let waiter = spawn_get(&cache);
    tokio::task::yield_now().await;
    assert_eq!(calls.load(SeqCst), 1);
    cache.revoke();
    gate.add_permits(1); // the pre-revocation fetch would now complete
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(secret(&got), "minted-2");
    sleep(Duration::from_secs(1)).await;
    assert_eq!(secret(&cache.get().await.unwrap()), "minted-2");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn revoke_drops_the_current_token() {
    let issuer = minting(Duration::from_secs(60));
    let cache = cache(issuer.source());
    let first = cache.get().await.unwrap();
    cache.revoke();
    assert!(cache.cached().is_none());
    assert_ne!(cache.get().await.unwrap().id(), first.id());
    assert_eq!(cache.stats().revocations, 1);
}

#[tokio::test(start_paused = true)]
async fn an_api_rejecting_every_fresh_token_cannot_make_the_cache_hammer_the_issuer() {
    let issuer = minting(Duration::from_secs(3600));
    let cache = cache(issuer.source());
    // Every request is rejected: invalidate the token it carried, get another, for a minute.
    let start = Instant::now();
    let mut held_off = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let s = cache.get().await.expect("a token is always served");
        if !cache.invalidate(s.id()) {
            held_off += 1;
        }
        sleep(Duration::from_millis(10)).await;
    }
    // The first rejection refetches at once; later ones wait 0.25 s doubling to 30 s.
    assert!(
        (8..=12).contains(&issuer.calls()),
        "{} fetches",
        issuer.calls()
    );
    assert!(held_off > 5000);
    assert_eq!(cache.stats().suppressed_invalidations, held_off);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_rejected_once_is_replaced_at_once() {
    let issuer = minting(Duration::from_secs(3600));
    let cache = cache(issuer.source());
    for _ in 0..3 {
        // each token is rejected once, then accepted for a while: no backoff applies
        let s = cache.get().await.unwrap();
        assert!(cache.invalidate(s.id()));
        let fresh = cache.get().await.unwrap();
        assert_ne!(fresh.id(), s.id());
        sleep(Duration::from_secs(11)).await;
        assert!(
            cache.invalidate(fresh.id()),
            "an old token's rejection is never held off"
        );
    }
    assert_eq!(cache.stats().suppressed_invalidations, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_background_work() {
    let issuer = minting(Duration::from_secs(10));
    let cache = cache(issuer.source());
    let clone = cache.clone();
    // Refreshes run ahead of expiry while the token is in use and a handle lives.
    for _ in 0..60 {
        clone.get().await.unwrap();
        sleep(Duration::from_secs(1)).await;
    }
    drop(cache);
    let with_a_handle = issuer.calls();
    assert!(
        with_a_handle >= 5,
        "refreshes ran while a handle lived: {with_a_handle}"
    );
    drop(clone);
    sleep(Duration::from_secs(600)).await;
    assert_eq!(
        issuer.calls(),
        with_a_handle,
        "no refresh after the last handle dropped"
    );
}

#[test]
fn outside_a_runtime_get_reports_the_missing_runtime() {
    let cache = cache(minting(Duration::from_secs(60)).source());
    let result = futures_executor_block_on(cache.get());
    assert!(matches!(result, Err(Error::NoRuntime)));
}

/// Polls a future to completion on this thread without any runtime.
fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[test]
fn a_runtime_shutting_down_mid_fetch_leaves_no_waiter_hanging() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let cache = cache(move || {
        let c = c.clone();
        async move {
            if c.fetch_add(1, SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok(Token::new("second").with_expires_in(Duration::from_secs(60)))
        }
    });
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = runtime();
    first.block_on(async {
        spawn_get(&cache);
        tokio::task::yield_now().await;
    });
    drop(first); // the fetch task dies with its runtime
    let got = runtime()
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), cache.get()).await });
    // The dead fetch was cleared, so this call started a new one instead of waiting forever.
    assert_eq!(secret(&got.expect("no hang").unwrap()), "second");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_issuer_saying_retry_after_is_not_asked_again_before_then() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let cache = TokenCache::new(move || {
        counted.fetch_add(1, SeqCst);
        async {
            Err::<Token, _>(
                FetchError::transient("the issuer answered 503")
                    .with_retry_after(Duration::from_secs(5)),
            )
        }
    });
    // A caller every second for ten seconds, as a busy client would.
    let mut retry_in = None;
    for _ in 0..10 {
        if let Err(Error::BackingOff { retry_in: wait, .. }) = cache.get().await {
            retry_in.get_or_insert(wait);
        }
        sleep(Duration::from_secs(1)).await;
    }
    // At 0 s and at 5 s; without the hint the backoff (100 ms, doubling) allows about six.
    assert_eq!(calls.load(SeqCst), 2);
    let retry_in = retry_in.expect("callers were told to wait");
    assert!(retry_in > Duration::from_secs(3), "{retry_in:?}");

    // A hint of an hour is capped by the backoff cap (30 s).
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let cache = TokenCache::new(move || {
        counted.fetch_add(1, SeqCst);
        async {
            Err::<Token, _>(
                FetchError::transient("the issuer answered 429")
                    .with_retry_after(Duration::from_secs(3600)),
            )
        }
    });
    assert!(cache.get().await.is_err());
    sleep(Duration::from_secs(31)).await;
    assert!(cache.get().await.is_err());
    assert_eq!(
        calls.load(SeqCst),
        2,
        "asked again after the cap, not after an hour"
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_token_keeps_most_of_its_life() {
    // 6 s tokens under the default 5 s clock-skew margin, a caller every 100 ms for 20 s.
    let issuer = minting(Duration::from_secs(6));
    let cache = cache(issuer.source());
    for _ in 0..200 {
        cache.get().await.unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    // Each token is usable 4.5 s (6 s less a quarter for skew); used all along, it is
    // refreshed ahead when 20-30 % (jittered) of that is left, so after 3.15 s at the earliest:
    // at most 7 fetches in 20 s, against the 25 of a token left 1 s of use.
    assert!(issuer.calls() <= 7, "{} fetches", issuer.calls());
}

#[tokio::test(start_paused = true)]
async fn a_short_token_rejected_near_its_end_is_refreshed_not_held_off() {
    // 6 s tokens (usable 4.5 s) at an API whose clock runs 3 s ahead: it rejects each token
    // 3 s after it was issued, before the token was ever accepted. Those are end-of-life
    // rejections, not a sign that fresh tokens are refused: none may be held off.
    let issuer = minting(Duration::from_secs(6));
    let cache = cache(issuer.source());
    for round in 0..20 {
        let token = cache.get().await.unwrap();
        sleep(Duration::from_secs(3)).await;
        assert!(
            cache.invalidate(token.id()),
            "rejection {round} at 3 s of a 6 s token was held off"
        );
    }
    assert_eq!(cache.stats().suppressed_invalidations, 0);
    assert_eq!(issuer.calls(), 20);
}

/// A source that fails while `up` is false, each failure carrying a probe that answers
/// `probe_says` (or `up` itself when `None`).
fn outage(
    up: &Arc<std::sync::atomic::AtomicBool>,
    probe_says: Option<bool>,
) -> (impl TokenSource + use<>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let up = Arc::clone(up);
    let source = move || {
        counted.fetch_add(1, SeqCst);
        let up = Arc::clone(&up);
        async move {
            if up.load(SeqCst) {
                return Ok(Token::new("back").with_expires_in(Duration::from_secs(300)));
            }
            let probe = Probe::new(move || {
                let up = Arc::clone(&up);
                async move { probe_says.unwrap_or_else(|| up.load(SeqCst)) }
            });
            Err(FetchError::transient("the issuer could not be reached").with_probe(probe))
        }
    };
    (source, calls)
}

#[tokio::test(start_paused = true)]
async fn a_probe_ends_a_long_backoff_as_soon_as_the_issuer_answers_again() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (source, calls) = outage(&up, None);
    let cache = cache(source);
    // A minute-long outage with a caller every 100 ms: the backoff grows to its 30 s cap;
    // the probes (no credentials) fetch nothing while the issuer is down.
    for _ in 0..600 {
        assert!(cache.get().await.is_err());
        sleep(Duration::from_millis(100)).await;
    }
    let during = calls.load(SeqCst);
    assert!(during <= 14, "{during} fetches during the outage");
    assert!(cache.status().failures >= 8, "the backoff had grown long");
    // The issuer comes back while the next regular attempt is still far off.
    while !matches!(cache.status().state,
        CacheState::BackingOff { retry_in } if retry_in > Duration::from_secs(5))
    {
        assert!(cache.get().await.is_err());
        sleep(Duration::from_millis(100)).await;
    }
    let during = calls.load(SeqCst);
    up.store(true, SeqCst);
    let back = Instant::now();
    let token = loop {
        if let Ok(token) = cache.get().await {
            break token;
        }
        sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(secret(&token), "back");
    // The next probe within a second, then a random spread of up to a second.
    assert!(
        back.elapsed() <= Duration::from_millis(2200),
        "callers waited {:?} after the issuer came back",
        back.elapsed()
    );
    assert_eq!(calls.load(SeqCst), during + 1);
    assert_eq!(cache.stats().recoveries, 1);
}

#[test]
fn a_probe_dropped_with_its_runtime_does_not_stop_probing() {
    // Sync code calling the cache on a throwaway runtime: a probe spawned there is dropped
    // unpolled with it. A later caller on a runtime that is driven probes again.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (source, calls) = outage(&up, None);
    let (clock, hand) = tokenwarden_core::Clock::manual();
    let cache = TokenCache::builder(source)
        .with_clock(clock)
        .with_first_fetch_backoff(Duration::from_secs(30))
        .with_recovery_probe(Duration::from_millis(50))
        .build()
        .unwrap();
    let throwaway = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    assert!(
        throwaway().block_on(cache.get()).is_err(),
        "the first fetch fails"
    );
    assert!(matches!(
        throwaway().block_on(cache.get()),
        Err(Error::BackingOff { .. })
    ));
    up.store(true, SeqCst);
    hand.advance(Duration::from_secs(3));
    let runtime = throwaway();
    let token = runtime.block_on(async {
        for _ in 0..100 {
            if let Ok(token) = cache.get().await {
                return token;
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!("no probe ran: the dropped one still counted as running")
    });
    assert_eq!(secret(&token), "back");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_is_wrong_costs_at_most_one_fetch_per_backoff_period() {
    // The probe always says "up" (the endpoint answers a bare GET) while token requests keep
    // failing: each backoff period allows one probe-started fetch on top of its own.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (source, calls) = outage(&up, Some(true));
    let cache = cache(source);
    for _ in 0..600 {
        assert!(cache.get().await.is_err());
        sleep(Duration::from_millis(100)).await;
    }
    let lied = calls.load(SeqCst);
    // Backoff alone: about 12 attempts in 60 s (100 ms doubling to 30 s, jittered); with one
    // probe-started fetch per period, at most twice that. Unchecked, one per second: 60.
    assert!(lied <= 28, "{lied} fetches in 60 s");
    assert!(cache.stats().recoveries <= 14);

    // Probing off: the backoff alone.
    let (source, calls) = outage(&up, Some(true));
    let cache = TokenCache::builder(source)
        .with_recovery_probe(Duration::ZERO)
        .build()
        .unwrap();
    for _ in 0..600 {
        assert!(cache.get().await.is_err());
        sleep(Duration::from_millis(100)).await;
    }
    assert!(calls.load(SeqCst) <= 14, "{}", calls.load(SeqCst));
    assert_eq!(cache.stats().recoveries, 0);
}

// ---- settings at their extremes ---------------------------------------------------------------

/// Every duration setting at `Duration::MAX` (the usual "no limit") is either refused by
/// `build()` with an error naming it, or works: never a panic on the first `get`.
#[tokio::test(start_paused = true)]
async fn a_duration_setting_at_its_maximum_is_refused_by_name_or_works() {
    use tokenwarden_core::{MemoryStore, RefreshBudget, SharedTokens, TokenCacheBuilder};
    type Set = fn(TokenCacheBuilder) -> TokenCacheBuilder;
    let cases: Vec<(&str, Set)> = vec![
        ("fetch_timeout", |b| b.with_fetch_timeout(Duration::MAX)),
        ("default_lifetime", |b| {
            b.with_default_lifetime(Duration::MAX)
        }),
        ("clock_skew", |b| b.with_clock_skew(Duration::MAX)),
        ("mandatory_margin", |b| {
            b.with_mandatory_margin(Duration::MAX)
        }),
        ("refresh_before", |b| b.with_refresh_before(Duration::MAX)),
        ("grace", |b| b.with_grace(Duration::MAX)),
        ("first_fetch_backoff", |b| {
            b.with_first_fetch_backoff(Duration::MAX)
        }),
        ("recovery_probe", |b| b.with_recovery_probe(Duration::MAX)),
        ("backoff", |b| b.with_backoff(Duration::MAX, Duration::MAX)),
        ("rejection_hold", |b| b.with_rejection_hold(Duration::MAX)),
        ("fresh_rejection_window", |b| {
            b.with_fresh_rejection_window(Duration::MAX)
        }),
        ("rejection_interval", |b| {
            b.with_rejection_interval(Duration::MAX)
        }),
        ("budget max_wait", |b| {
            b.with_refresh_budget(RefreshBudget::per_second(10).with_max_wait(Duration::MAX))
        }),
        ("shared pause_after_trouble", |b| {
            let shared = SharedTokens::builder(MemoryStore::new())
                .with_pause_after_trouble(Duration::MAX)
                .build();
            b.with_shared(&shared, "k")
        }),
        ("shared store_timeout", |b| {
            let shared = SharedTokens::builder(MemoryStore::new())
                .with_store_timeout(Duration::MAX)
                .build();
            b.with_shared(&shared, "k")
        }),
        ("shared lease_ttl", |b| {
            let shared = SharedTokens::builder(MemoryStore::new())
                .with_lease_ttl(Duration::MAX)
                .build();
            b.with_shared(&shared, "k")
        }),
        ("shared poll_interval", |b| {
            let shared = SharedTokens::builder(MemoryStore::new())
                .with_poll_interval(Duration::MAX)
                .build();
            b.with_shared(&shared, "k")
        }),
    ];
    for (name, set) in cases {
        let issuer = CountingIssuer::up();
        let built = std::panic::catch_unwind(|| set(TokenCache::builder(issuer.source())).build());
        let Ok(built) = built else {
            panic!("{name}: build() panicked");
        };
        match built {
            Err(error) => {
                let text = error.to_string();
                let word = name.rsplit(' ').next().unwrap();
                assert!(text.contains(word), "{name}: the error names it: {text}");
            }
            Ok(cache) => {
                let got = tokio::spawn(async move {
                    let token = cache.get().await;
                    let _ = cache.invalidate(token.as_ref().unwrap().id());
                    let _ = cache.get().await;
                    let _ = cache.status();
                    token.map(|t| t.id())
                })
                .await;
                assert!(got.is_ok(), "{name}: works, no panic: {got:?}");
            }
        }
    }
}

// ---- recovery after an issuer's own failure -------------------------------------------------

/// An issuer answering 503 (without `Retry-After`) for 8 s, to callers calling every 50 ms.
/// Returns how long after it was healthy again the first caller got a token, and the calls.
async fn recovery_after_an_outage(fast: bool) -> (Duration, usize) {
    let healthy_at = Instant::now() + Duration::from_secs(8);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let cache = TokenCache::builder(move || {
        counted.fetch_add(1, SeqCst);
        async move {
            if Instant::now() < healthy_at {
                let failed = FetchError::transient("the issuer answered 503");
                return Err(if fast {
                    failed.with_fast_retry()
                } else {
                    failed
                });
            }
            Ok(Token::new("t").with_expires_in(Duration::from_secs(600)))
        }
    })
    .build()
    .unwrap();
    while cache.get().await.is_err() {
        sleep(Duration::from_millis(50)).await;
    }
    (Instant::now() - healthy_at, calls.load(SeqCst))
}

#[tokio::test(start_paused = true)]
async fn an_issuer_that_failed_with_a_5xx_is_asked_again_on_the_short_beat_while_callers_wait() {
    let (late, calls) = recovery_after_an_outage(true).await;
    println!("fast retry: a token {late:?} after the issuer was healthy, {calls} calls");
    // The beat is `recovery_probe` (1 s), jittered between half and all of it.
    assert!(late <= Duration::from_millis(1_050), "{late:?}");
    // One call per beat at most (8 s at no less than half a second), plus the first ones
    // before the backoff grew to the beat.
    assert!(calls <= 8 * 2 + 5, "{calls} calls");
    let (late, calls) = recovery_after_an_outage(false).await;
    println!("exponential backoff: a token {late:?} after, {calls} calls");
}
