//! The cache keeps its promises whatever runtime and traffic it meets: undriven and dying
//! runtimes, sync callers, first use inside the refresh window, single-use blips, APIs that end
//! tokens that worked; and the settings users know from the cloud SDKs' credential caches.
//! Time is Tokio's paused clock, or a manual clock where it must pass without any runtime
//! being driven.

use std::future::Future;
use std::time::Duration;

use tokenwarden_core::{
    CacheState, Clock, Error, HeldOff, Invalidation, ManualClock, Route, TokenCache,
    TokenCacheBuilder,
};
use tokenwarden_test_support::{CountingIssuer, secret, spawn_get, spawn_gets};
use tokio::time::{advance, sleep};

/// An issuer minting `tok-1`, `tok-2`, ... that live `lifetime`, counting its calls.
fn minting(lifetime: Duration) -> CountingIssuer {
    CountingIssuer::up().with_lifetime(lifetime)
}

fn builder(issuer: &CountingIssuer) -> TokenCacheBuilder {
    TokenCache::builder(issuer.source())
}

fn current_thread(paused: bool) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap()
}

/// A one-worker multi-thread runtime, driven on its own.
fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a fetch on `runtime` (a caller there, polled once) and leaves it to that runtime.
fn start_fetch_on(runtime: &tokio::runtime::Runtime, cache: &TokenCache) {
    runtime.block_on(async {
        spawn_get(cache);
        tokio::task::yield_now().await;
    });
}

/// A cache on a manual clock: time passes only when the test says so.
fn manual(issuer: &CountingIssuer) -> (TokenCache, ManualClock) {
    let (clock, hand) = Clock::manual();
    let cache = builder(issuer).with_clock(clock).build().unwrap();
    (cache, hand)
}

// ---- 1. expiry without a driven runtime ----------------------------------------------------

#[test]
fn sync_code_calling_block_on_per_request_never_gets_a_token_past_its_deadline() {
    let issuer = minting(Duration::from_secs(20));
    let (cache, clock) = manual(&issuer);
    let runtime = current_thread(false);
    let first = runtime.block_on(cache.get()).unwrap().id();
    for _ in 0..100 {
        assert_eq!(runtime.block_on(cache.get()).unwrap().id(), first);
    }
    // A long idle gap in which nothing drives the runtime. Usable life 20 s - 5 s skew, its
    // mandatory point 1.5 s before that: at 14 s the token must no longer be served.
    clock.advance(Duration::from_secs(14));
    let next = runtime.block_on(cache.get()).unwrap().id();
    assert_ne!(next, first, "served past its mandatory point");
    assert_eq!(issuer.calls(), 2);
}

#[test]
fn a_task_looping_on_an_always_ready_get_sees_the_deadline() {
    let issuer = minting(Duration::from_secs(20));
    let (cache, clock) = manual(&issuer);
    let runtime = current_thread(false);
    let served = runtime.block_on(async {
        let first = cache.get().await.unwrap().id();
        // Never yields while the token is cached: no timer of this runtime can run.
        let mut served_after_deadline = 0;
        for i in 0..20_000u32 {
            if i == 10_000 {
                clock.advance(Duration::from_secs(14));
            }
            let id = cache.get().await.unwrap().id();
            if i >= 10_000 && id == first {
                served_after_deadline += 1;
            }
        }
        served_after_deadline
    });
    assert_eq!(served, 0);
    assert_eq!(issuer.calls(), 2);
}

// ---- 2. flights on other runtimes ----------------------------------------------------------

#[test]
fn a_fetch_stranded_on_an_idle_runtime_holds_no_caller_past_the_fetch_timeout() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_millis(50));
    let cache = builder(&issuer)
        .with_fetch_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let idle = current_thread(true);
    start_fetch_on(&idle, &cache);
    // `idle` lives on, never driven again: its fetch never finishes.
    let other = current_thread(true);
    let (first, second, waited) = other.block_on(async {
        let start = tokio::time::Instant::now();
        let first = cache.get().await;
        let waited = start.elapsed();
        (first, cache.get().await, waited)
    });
    assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
    assert!(
        waited <= Duration::from_millis(2100),
        "waited {waited:?} for a 2 s fetch timeout"
    );
    // The stranded fetch was given up: the next caller fetched on its own runtime.
    assert_eq!(second.unwrap().token().secret().expose(), "tok-2");
    assert_eq!(cache.stats().superseded_fetches, 1);
    drop(idle);
}

#[test]
fn a_fetch_whose_runtime_shuts_down_hands_no_waiter_a_spurious_cancelled() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_secs(3600));
    let cache = builder(&issuer).build().unwrap();
    let dying = current_thread(true);
    start_fetch_on(&dying, &cache);
    let other = multi_thread();
    let c = cache.clone();
    let waiter = other.spawn(async move { c.get().await });
    // Wait until it is waiting for the dying runtime's fetch.
    while cache.stats().waits < 2 {
        std::thread::yield_now();
    }
    drop(dying);
    // The waiter starts over on its own runtime; that fetch sleeps an hour of real time,
    // so only its start is asserted: no Cancelled came back.
    let outcome =
        other.block_on(async { tokio::time::timeout(Duration::from_millis(200), waiter).await });
    match outcome {
        Err(_elapsed) => {} // still waiting, on a fetch of its own
        Ok(result) => assert!(
            !matches!(result.unwrap(), Err(Error::Cancelled)),
            "spurious Cancelled"
        ),
    }
    assert_eq!(issuer.calls(), 2, "the waiter started a fetch of its own");
}

/// A single-use get starts a pool refill before its own fetch; a runtime that ends before the
/// refill task is ever polled drops it unpolled. The next runtime refills the pool again.
#[test]
fn a_pool_refill_dropped_unpolled_with_its_runtime_is_started_again_on_the_next() {
    let issuer = minting(Duration::from_secs(600));
    let cache = builder(&issuer).with_pool(1).build().unwrap();
    let dying = current_thread(false);
    // The issuer answers at once: the get is ready on its first poll, the refill never runs.
    dying.block_on(async { cache.get().await.unwrap() });
    assert_eq!(issuer.calls(), 1, "the refill task was never polled");
    drop(dying);

    let next = current_thread(false);
    next.block_on(async {
        cache.get().await.unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(issuer.calls(), 3, "its own fetch, and a refill of the pool");
        // The next caller takes the pooled token, no issuer call of its own.
        cache.get().await.unwrap();
        assert_eq!(issuer.calls(), 3, "served from the pool");
    });
}

// ---- 3. refresh ahead on use -----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_token_first_used_inside_its_window_is_refreshed_in_the_background() {
    let issuer = minting(Duration::from_secs(100));
    let cache = builder(&issuer).build().unwrap();
    cache.get().await.unwrap();
    // Idle when the window opens (70-80 s of 95 s usable), used at 85 s.
    sleep(Duration::from_secs(85)).await;
    assert_eq!(secret(&cache.get().await.unwrap()), "tok-1");
    sleep(Duration::from_millis(1)).await;
    let stats = cache.stats();
    assert_eq!(stats.refreshes_ahead, 1);
    assert_eq!(issuer.calls(), 2);
    assert_eq!(secret(&cache.get().await.unwrap()), "tok-2");
    assert_eq!(stats.waits, 1, "only the very first call waited");
}

#[tokio::test(start_paused = true)]
async fn an_idle_cache_never_calls_the_issuer() {
    let issuer = minting(Duration::from_secs(100));
    let cache = builder(&issuer).build().unwrap();
    cache.get().await.unwrap();
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(issuer.calls(), 1);
}

// ---- 4. single-use under failure -----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_single_use_blip_under_load_is_one_failure_and_a_bounded_burst() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_millis(100));
    let cache = builder(&issuer).single_use().build().unwrap();
    issuer.fail(true);
    for caller in spawn_gets(&cache, 50) {
        assert!(caller.await.unwrap().is_err());
    }
    assert!(
        issuer.calls() <= 4,
        "{} issuer requests for 50 callers",
        issuer.calls()
    );
    let status = cache.status();
    assert_eq!(status.failures, 1, "one outage, one failure");
    let CacheState::BackingOff { retry_in } = status.state else {
        panic!("{status:?}");
    };
    assert!(retry_in <= Duration::from_millis(100), "{retry_in:?}");
    issuer.fail(false);
    advance(retry_in).await;
    cache.get().await.expect("backoff as after one failure");
}

#[tokio::test(start_paused = true)]
async fn single_use_keeps_at_most_four_issuer_requests_in_flight_pool_included() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_millis(50));
    let cache = builder(&issuer).with_pool(3).build().unwrap();
    let mut ids = Vec::new();
    for caller in spawn_gets(&cache, 200) {
        ids.push(caller.await.unwrap().unwrap().id());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every caller its own token");
    assert!(issuer.most_in_flight() <= 4);
}

// ---- 5. acceptance ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_token_that_worked_is_replaced_on_rejection_twice_in_a_row_then_once_per_interval() {
    let issuer = minting(Duration::from_secs(600));
    let cache = builder(&issuer).build().unwrap();
    let mut replaced = 0;
    for _ in 1..=20 {
        let token = cache.get().await.unwrap();
        token.mark_accepted();
        sleep(Duration::from_millis(200)).await;
        replaced += usize::from(cache.invalidate(token.id()));
    }
    // 20 rejections of working tokens in 4 s: a burst of two replacements, then the bound.
    assert_eq!(replaced, 2);
    assert_eq!(cache.stats().suppressed_invalidations, 18);
    assert_eq!(cache.status().held_off_rejections, 18);
    assert_eq!(issuer.calls(), 3);
    // One interval on, a working token is replaced again: a real expiry is absorbed.
    sleep(Duration::from_secs(5)).await;
    let token = cache.get().await.unwrap();
    assert_eq!(
        cache.reject(token.id(), Route::of("GET", "/")),
        Invalidation::Discarded
    );
    assert_eq!(issuer.calls(), 3, "fetched on the next use");
    // Tokens rejected before any success still count as fresh rejections.
    sleep(Duration::from_secs(10)).await;
    let first = cache.get().await.unwrap();
    assert!(cache.invalidate(first.id()));
    let second = cache.get().await.unwrap();
    assert_eq!(
        cache.reject(second.id(), Route::of("GET", "/")),
        Invalidation::HeldOff(HeldOff::FreshTokensRejected)
    );
}

#[tokio::test(start_paused = true)]
async fn revocations_whose_replays_are_accepted_are_all_absorbed() {
    let issuer = minting(Duration::from_secs(600));
    let cache = builder(&issuer).build().unwrap();
    let route = Route::of("POST", "/pay");
    for round in 1..=10 {
        let token = cache.get().await.unwrap();
        token.mark_accepted();
        assert_eq!(
            cache.reject(token.id(), route),
            Invalidation::Discarded,
            "{round}"
        );
        // The replay with the fresh token is accepted: the rejection was about the token.
        let fresh = cache.get().await.unwrap();
        cache.replay_accepted(fresh.id(), route);
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(issuer.calls(), 11);
    assert_eq!(cache.stats().suppressed_invalidations, 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_bound_every_rejection_of_a_working_token_replaces_it() {
    let issuer = minting(Duration::from_secs(600));
    let cache = builder(&issuer)
        .with_rejection_interval(Duration::ZERO)
        .build()
        .unwrap();
    for round in 1..=20 {
        let token = cache.get().await.unwrap();
        token.mark_accepted();
        sleep(Duration::from_millis(200)).await;
        assert!(cache.invalidate(token.id()), "round {round}");
    }
    assert_eq!(issuer.calls(), 20);
}

#[tokio::test(start_paused = true)]
async fn a_route_that_rejects_fresh_tokens_is_held_off_while_a_revocation_is_still_absorbed() {
    let issuer = minting(Duration::from_secs(600));
    let cache = builder(&issuer).build().unwrap();
    let (good, bad) = (Route::of("POST", "/pay"), Route::of("GET", "/admin"));
    let first = cache.get().await.unwrap();
    first.mark_accepted();
    assert_eq!(cache.reject(first.id(), bad), Invalidation::Discarded);
    let fresh = cache.get().await.unwrap();
    cache.reject_replay(fresh.id(), bad);
    assert_eq!(cache.status().routes_held_off, 1);
    assert_eq!(issuer.calls(), 2);
    // 60 s of the bad route rejecting, 10 times a second, while the good route accepts, as
    // the layers do it: a replacement is replayed on the bad route, and rejected again.
    let mut replaced_at = Vec::new();
    for tick in 0..600 {
        let token = cache.get().await.unwrap();
        token.mark_accepted();
        match cache.reject(token.id(), bad) {
            Invalidation::HeldOff(HeldOff::Route) => {}
            Invalidation::Discarded => {
                replaced_at.push(tick / 10);
                let fresh = cache.get().await.unwrap();
                cache.reject_replay(fresh.id(), bad);
            }
            other => panic!("{other:?} at {tick}"),
        }
        sleep(Duration::from_millis(100)).await;
    }
    // Tried again when its time is up: 5, 10, 20 s later (the time doubles).
    assert_eq!(
        replaced_at,
        [5, 15, 35],
        "seconds at which the bad route was tried again"
    );
    assert_eq!(
        issuer.calls(),
        5,
        "the bad route cost four fetches in a minute"
    );
    // A revocation: the good route rejects the token that worked. One refresh, at once.
    let token = cache.get().await.unwrap();
    assert_eq!(cache.reject(token.id(), good), Invalidation::Discarded);
    let after = cache.get().await.unwrap();
    assert_ne!(after.id(), token.id());
    cache.replay_accepted(after.id(), good);
    assert_eq!(issuer.calls(), 6);
}

// ---- 6. looking is not using -----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn debug_and_status_have_no_side_effects() {
    let issuer = minting(Duration::from_secs(100));
    let cache = builder(&issuer).build().unwrap();
    for _ in 0..3 {
        cache.get().await.unwrap();
    }
    let before = cache.stats();
    sleep(Duration::from_secs(85)).await;
    let _ = format!("{cache:?}");
    let _ = cache.status();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(cache.stats(), before, "neither counted as a use");
    assert_eq!(issuer.calls(), 1, "nor started the refresh");
}

// ---- the SDK caches' settings ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn grace_serves_the_last_token_while_the_issuer_fails_never_past_its_expiry() {
    let issuer = minting(Duration::from_secs(100));
    let cache = builder(&issuer)
        .with_grace(Duration::from_secs(30))
        .build()
        .unwrap();
    let token = cache.get().await.unwrap().id();
    issuer.fail(true);
    // Usable life 95 s, mandatory at 90 s, stated expiry at 100 s.
    sleep(Duration::from_secs(91)).await;
    assert_eq!(cache.get().await.unwrap().id(), token, "in grace");
    assert_eq!(cache.status().state, CacheState::Grace);
    sleep(Duration::from_secs(8)).await;
    assert_eq!(
        cache.get().await.unwrap().id(),
        token,
        "still before expiry"
    );
    assert!(cache.stats().grace_serves >= 2);
    sleep(Duration::from_secs(2)).await;
    assert!(cache.get().await.is_err(), "never past the stated expiry");
    issuer.fail(false);
    sleep(Duration::from_secs(1)).await;
    assert_ne!(cache.get().await.unwrap().id(), token);
}

#[tokio::test(start_paused = true)]
async fn grace_past_expiry_is_an_explicit_opt_in() {
    let issuer = minting(Duration::from_secs(100));
    let cache = builder(&issuer)
        .with_grace(Duration::from_secs(30))
        .with_grace_past_expiry(true)
        .build()
        .unwrap();
    let token = cache.get().await.unwrap().id();
    issuer.fail(true);
    sleep(Duration::from_secs(110)).await;
    assert_eq!(cache.get().await.unwrap().id(), token);
    sleep(Duration::from_secs(15)).await;
    assert!(
        cache.get().await.is_err(),
        "grace ends 30 s past the mandatory point"
    );
}

#[tokio::test(start_paused = true)]
async fn without_grace_a_failing_issuer_leaves_callers_with_the_error() {
    let issuer = minting(Duration::from_secs(100));
    let cache = builder(&issuer).build().unwrap();
    cache.get().await.unwrap();
    issuer.fail(true);
    sleep(Duration::from_secs(91)).await;
    assert!(cache.get().await.is_err());
    assert_eq!(cache.stats().grace_serves, 0);
}

#[tokio::test(start_paused = true)]
async fn the_first_fetch_backs_off_for_less_than_a_refresh_does() {
    let issuer = minting(Duration::from_secs(100));
    issuer.fail(true);
    let empty = builder(&issuer).build().unwrap();
    assert!(empty.get().await.is_err());
    let CacheState::BackingOff { retry_in } = empty.status().state else {
        panic!("{:?}", empty.status());
    };
    assert!(retry_in <= Duration::from_millis(100), "{retry_in:?}");

    issuer.fail(false);
    let holding = builder(&issuer).build().unwrap();
    holding.get().await.unwrap();
    issuer.fail(true);
    sleep(Duration::from_secs(80)).await;
    holding.get().await.unwrap(); // in the window (66.5-76 s): the refresh starts, and fails
    sleep(Duration::from_millis(1)).await;
    let status = holding.status();
    let CacheState::BackingOff { retry_in } = status.state else {
        panic!("{status:?}");
    };
    assert!(retry_in >= Duration::from_millis(120), "{retry_in:?}");
    assert!(status.token.is_some(), "the working token is still served");
}

#[tokio::test(start_paused = true)]
async fn status_says_what_the_cache_is_doing() {
    let issuer = minting(Duration::from_secs(100)).with_delay(Duration::from_secs(1));
    let cache = builder(&issuer).build().unwrap();
    assert_eq!(cache.status().state, CacheState::Empty);
    let c = cache.clone();
    let warming = tokio::spawn(async move { c.warm().await });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(cache.status().state, CacheState::Refreshing);
    let id = warming.await.unwrap().unwrap();
    let status = cache.status();
    assert_eq!(status.state, CacheState::Fresh);
    assert_eq!(status.token, Some(id));
    assert_eq!(status.expires_in, Some(Duration::from_secs(99)));
    assert!(status.refresh_in.unwrap() > Duration::from_secs(60));
    assert!(status.last_error.is_none());

    issuer.reject(true);
    let rejected = builder(&issuer).build().unwrap();
    assert!(rejected.warm().await.unwrap_err().is_rejected());
    let status = rejected.status();
    assert!(
        matches!(status.state, CacheState::CredentialsRejected { .. }),
        "{status:?}"
    );
    assert!(status.last_error.unwrap().is_rejected());
}

#[tokio::test(start_paused = true)]
async fn warm_in_single_use_mode_keeps_the_token_for_the_next_caller() {
    let issuer = minting(Duration::from_secs(100));
    let cache = builder(&issuer).single_use().build().unwrap();
    let warmed = cache.warm().await.unwrap();
    // Kept for as long as it is usable (95 s of life, mandatory point at 90 s).
    sleep(Duration::from_secs(60)).await;
    assert_eq!(cache.get().await.unwrap().id(), warmed);
    assert_eq!(issuer.calls(), 1);
    assert_ne!(cache.get().await.unwrap().id(), warmed);
}

#[tokio::test(start_paused = true)]
async fn an_absolute_refresh_window_starts_the_refresh_that_long_before_expiry() {
    let issuer = minting(Duration::from_secs(3605));
    let cache = builder(&issuer)
        .with_refresh_before(Duration::from_secs(600))
        .build()
        .unwrap();
    cache.get().await.unwrap();
    // Usable life 3600 s: the window opens 600-660 s before it.
    sleep(Duration::from_secs(2930)).await;
    cache.get().await.unwrap();
    sleep(Duration::from_millis(1)).await;
    assert_eq!(issuer.calls(), 1, "not yet");
    sleep(Duration::from_secs(71)).await;
    cache.get().await.unwrap();
    sleep(Duration::from_millis(1)).await;
    assert_eq!(issuer.calls(), 2);
}

#[test]
fn a_cached_token_is_served_outside_any_runtime() {
    let issuer = minting(Duration::from_secs(600));
    let cache = builder(&issuer).build().unwrap();
    current_thread(false).block_on(cache.warm()).unwrap();
    // From a plain thread, polled once with no runtime: the hot path (and the slow path's
    // first look) need none.
    let served = std::thread::spawn(move || {
        let mut get = std::pin::pin!(cache.get());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match get.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => result.map(|s| secret(&s)),
            std::task::Poll::Pending => panic!("waited outside a runtime"),
        }
    })
    .join()
    .unwrap();
    assert_eq!(served.unwrap(), "tok-1");
}

#[test]
fn a_refresh_stranded_on_an_idle_runtime_is_given_up_not_waited_for() {
    // The background refresh starts on a runtime that is then never driven again; at the
    // mandatory point a caller elsewhere starts over instead of getting a zero-wait timeout.
    let issuer = minting(Duration::from_secs(20)).with_delay(Duration::from_millis(50));
    let (clock, hand) = Clock::manual();
    let cache = builder(&issuer)
        .with_clock(clock)
        .with_fetch_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let idle = current_thread(false);
    assert_eq!(secret(&idle.block_on(cache.get()).unwrap()), "tok-1");
    // Usable life 15 s: the window opens at 10.5-12 s, the mandatory point is at 13.5 s.
    hand.advance(Duration::from_millis(12_500));
    assert_eq!(secret(&idle.block_on(cache.get()).unwrap()), "tok-1");
    assert_eq!(
        cache.stats().refreshes_ahead,
        1,
        "the refresh started on `idle`"
    );
    hand.advance(Duration::from_millis(1500));
    let other = current_thread(false);
    let got = other.block_on(cache.get()).expect("no zero-wait timeout");
    assert_ne!(secret(&got), "tok-1", "a fresh token, fetched on `other`");
    assert_eq!(cache.stats().superseded_fetches, 1);
    drop(idle);
}

#[test]
fn starting_over_never_stretches_a_wait_past_the_first_deadline() {
    // Every fetch hangs. A waiter's fetch dies with its runtime; the waiter starts over on its
    // own runtime, but still returns by the first fetch's deadline (1 s + 100 ms), not a whole
    // new fetch timeout later. (Real time, on a multi-thread runtime: the runtimes' own clocks
    // are what is under test.)
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_secs(3600));
    let cache = builder(&issuer)
        .with_fetch_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let dying = current_thread(false);
    start_fetch_on(&dying, &cache);
    let other = multi_thread();
    let start = std::time::Instant::now();
    let c = cache.clone();
    let waiter = other.spawn(async move { c.get().await });
    while cache.stats().waits < 2 {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(dying);
    let result = other.block_on(waiter).unwrap();
    let waited = start.elapsed();
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(waited < Duration::from_millis(1400), "waited {waited:?}");
    assert_eq!(issuer.calls(), 2, "it did start over");
}

#[tokio::test(start_paused = true)]
async fn single_use_callers_cancelled_mid_fetch_release_their_places() {
    let issuer = minting(Duration::from_secs(60)).with_delay(Duration::from_secs(1));
    let cache = builder(&issuer).single_use().build().unwrap();
    let callers = spawn_gets(&cache, 10);
    sleep(Duration::from_millis(100)).await;
    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        assert!(caller.await.unwrap_err().is_cancelled());
    }
    // All four places are free again: four callers fetch at once, each in one delay.
    let start = tokio::time::Instant::now();
    for caller in spawn_gets(&cache, 4) {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        cache.status().failures,
        0,
        "a cancelled caller is no failure"
    );
}
