//! The cache's metrics, recorded through the `metrics` facade into a test recorder.
#![cfg(feature = "metrics")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokenwarden_core::metrics::{FETCH_DURATION, FETCHES, INVALIDATIONS, REVOCATIONS};
use tokenwarden_core::{FetchError, Token, TokenCache};
use tokenwarden_test_support::recorded;

fn counter(all: &[(String, DebugValue)], name: &str) -> u64 {
    match all.iter().find(|(n, _)| n == name) {
        Some((_, DebugValue::Counter(n))) => *n,
        _ => 0,
    }
}

#[test]
fn fetches_invalidations_and_revocations_are_counted_by_cache_and_outcome() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            let cache = TokenCache::builder(move || {
                let n = counted.fetch_add(1, SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if n == 1 {
                        return Err(FetchError::transient("the issuer answered 503"));
                    }
                    Ok(Token::new(format!("tok-{n}")).with_expires_in(Duration::from_secs(3600)))
                }
            })
            .with_name("payments")
            .build()
            .unwrap();
            assert!(cache.get().await.is_err());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let first = cache.get().await.unwrap();
            cache.invalidate(first.id());
            cache.invalidate(first.id());
            let _second = cache.get().await.unwrap();
            cache.revoke();
        });
    });
    let all = recorded(&recorder);
    let text = format!("{all:?}");
    assert_eq!(
        counter(
            &all,
            &format!("{FETCHES}{{cache=payments,outcome=transient}}")
        ),
        1,
        "{text}"
    );
    assert_eq!(
        counter(
            &all,
            &format!("{FETCHES}{{cache=payments,outcome=success}}")
        ),
        2,
        "{text}"
    );
    assert_eq!(
        counter(
            &all,
            &format!("{INVALIDATIONS}{{cache=payments,result=discarded}}")
        ),
        1,
        "{text}"
    );
    assert_eq!(
        counter(
            &all,
            &format!("{INVALIDATIONS}{{cache=payments,result=stale}}")
        ),
        1,
        "{text}"
    );
    assert_eq!(
        counter(&all, &format!("{REVOCATIONS}{{cache=payments}}")),
        1,
        "{text}"
    );
    let durations = all
        .iter()
        .find(|(n, _)| n == &format!("{FETCH_DURATION}{{cache=payments}}"));
    let Some((_, DebugValue::Histogram(samples))) = durations else {
        panic!("no fetch durations: {text}")
    };
    assert_eq!(samples.len(), 3);
    assert!(
        samples.iter().all(|s| s.into_inner() >= 0.25),
        "{samples:?}"
    );
    // No label carries a token.
    assert!(!text.contains("tok-"), "{text}");
}

#[test]
fn the_single_use_pool_level_is_a_gauge() {
    let recorder = DebuggingRecorder::new();
    let level = |recorder: &DebuggingRecorder| {
        let all = recorded(recorder);
        match all
            .iter()
            .find(|(n, _)| n == "tokenwarden_token_pool_size{cache=boipa}")
        {
            Some((_, DebugValue::Gauge(level))) => Some(level.into_inner()),
            _ => None,
        }
    };
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            let cache = TokenCache::builder(move || {
                let n = counted.fetch_add(1, SeqCst) + 1;
                async move { Ok::<_, FetchError>(Token::new(format!("tok-{n}"))) }
            })
            .with_name("boipa")
            .single_use()
            .with_pool(2)
            .build()
            .unwrap();
            cache.get().await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(level(&recorder), Some(2.0), "the pool refilled to 2");
            cache.get().await.unwrap();
            assert_eq!(level(&recorder), Some(1.0), "one taken");
            cache.revoke();
            assert_eq!(level(&recorder), Some(0.0), "revoked");
        });
    });
}
