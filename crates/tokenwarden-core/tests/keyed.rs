//! The keyed cache: one token cache per key, asserted by counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokenwarden_core::{
    ConfigError, Error, FetchError, KeyedCache, Token, TokenCache, TokenCacheBuilder,
};
use tokenwarden_test_support::secret;
use tokio::time::sleep;

/// Fetches per key, counted by a factory whose sources mint `<key>-<n>`.
#[derive(Clone, Default)]
struct Issuer {
    calls: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Issuer {
    fn builder(&self, key: u32, lifetime: Duration, delay: Duration) -> TokenCacheBuilder {
        let calls = Arc::clone(&self.calls);
        TokenCache::builder(move || {
            let n = {
                let mut calls = calls.lock().unwrap();
                let n = calls.entry(key).or_default();
                *n += 1;
                *n
            };
            async move {
                sleep(delay).await;
                Ok::<_, FetchError>(Token::new(format!("{key}-{n}")).with_expires_in(lifetime))
            }
        })
    }

    fn keyed(&self, capacity: usize, delay: Duration) -> KeyedCache<u32> {
        let issuer = self.clone();
        KeyedCache::builder()
            .with_capacity(capacity)
            .with_factory(move |key: &u32| {
                Ok(issuer.builder(*key, Duration::from_secs(600), delay))
            })
            .build()
    }

    fn calls(&self, key: u32) -> usize {
        self.calls.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_each_hit_by_a_stampede_fetch_once_each() {
    let issuer = Issuer::default();
    let keyed = issuer.keyed(20_000, Duration::from_millis(20));
    let mut tasks = Vec::new();
    for key in 0..10_000u32 {
        for _ in 0..5 {
            let keyed = keyed.clone();
            tasks.push(tokio::spawn(async move {
                let token = keyed.get(&key).await.unwrap();
                assert_eq!(
                    secret(&token),
                    format!("{key}-1"),
                    "never another key's token"
                );
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        issuer.total(),
        10_000,
        "one fetch per key for 50,000 callers"
    );
    assert!((0..10_000).all(|key| issuer.calls(key) == 1));
    assert_eq!(keyed.len(), 10_000);
    let summary = keyed.summary(5);
    assert_eq!((summary.keys, summary.fresh), (10_000, 10_000));
    assert!(summary.worst.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_load_never_drops_a_key_in_use() {
    let issuer = Issuer::default();
    let keyed = issuer.keyed(100, Duration::ZERO);
    // A full cache of keys used again and again: the eviction policy favours them.
    for _ in 0..3 {
        for key in 10_000..10_100u32 {
            keyed.get(&key).await.unwrap();
        }
    }
    // 50 keys with a request in flight (a handle held), and one whose fetch is under way:
    // new, used once, the first the policy would drop.
    let mut in_use = Vec::new();
    for key in 0..50u32 {
        let handle = keyed.handle(&key).unwrap();
        let token = handle.cache().get().await.unwrap();
        in_use.push((key, handle, token.id()));
    }
    let slow = Issuer::default();
    let slow_key = 1_000_000u32;
    keyed
        .register(
            slow_key,
            slow.builder(slow_key, Duration::from_secs(600), Duration::from_secs(2)),
        )
        .unwrap();
    let fetching = tokio::spawn({
        let keyed = keyed.clone();
        async move { keyed.get(&slow_key).await.map(|t| secret(&t)) }
    });
    sleep(Duration::from_millis(50)).await;
    // 2,000 other keys come and go, far past the capacity of 100.
    for key in 100..2_100u32 {
        keyed.get(&key).await.unwrap();
    }
    assert!(keyed.len() <= 160, "bounded: {} keys held", keyed.len());
    for (key, handle, id) in &in_use {
        assert!(keyed.status(key).is_some(), "key {key} in use was evicted");
        assert_eq!(handle.cache().cached().map(|t| t.id()), Some(*id));
        assert_eq!(issuer.calls(*key), 1, "key {key} kept its token");
    }
    assert_eq!(fetching.await.unwrap().unwrap(), format!("{slow_key}-1"));
    assert_eq!(slow.calls(slow_key), 1);
    // Released, the keys may go.
    drop(in_use);
    for key in 3_000..5_000u32 {
        keyed.get(&key).await.unwrap();
    }
    assert!(keyed.len() <= 110, "{} keys held", keyed.len());
}

#[tokio::test(start_paused = true)]
async fn rotating_a_keys_credentials_while_50_tasks_use_it_fails_no_request() {
    // The issuer accepts credentials by version; tokens live 10 s, so fetches go on during
    // the run. Rotation: the new credentials are accepted, the key rotates to them, then the
    // old ones are refused.
    let accepted = Arc::new(Mutex::new(vec![1u32]));
    let fetched_with = Arc::new(Mutex::new(Vec::<u32>::new()));
    let credentials = |version: u32| {
        let accepted = Arc::clone(&accepted);
        let fetched_with = Arc::clone(&fetched_with);
        move || {
            let ok = accepted.lock().unwrap().contains(&version);
            fetched_with.lock().unwrap().push(version);
            async move {
                if ok {
                    Ok(Token::new(format!("v{version}")).with_expires_in(Duration::from_secs(10)))
                } else {
                    Err(FetchError::rejected("unknown credentials"))
                }
            }
        }
    };
    let keyed = KeyedCache::<&'static str>::builder().build();
    keyed
        .register("merchant-7", TokenCache::builder(credentials(1)))
        .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (keyed, failures, requests, stop) = (
            keyed.clone(),
            Arc::clone(&failures),
            Arc::clone(&requests),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                match keyed.get(&"merchant-7").await {
                    Ok(_) => requests.fetch_add(1, SeqCst),
                    Err(_) => failures.fetch_add(1, SeqCst),
                };
                sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    sleep(Duration::from_secs(25)).await;
    accepted.lock().unwrap().push(2);
    assert!(keyed.rotate(&"merchant-7", credentials(2)));
    let rotated_at = fetched_with.lock().unwrap().len();
    accepted.lock().unwrap().retain(|v| *v == 2);
    sleep(Duration::from_secs(35)).await;
    stop.store(true, SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(failures.load(SeqCst), 0, "no request failed");
    assert!(requests.load(SeqCst) > 20_000);
    let fetched = fetched_with.lock().unwrap().clone();
    assert!(fetched[..rotated_at].iter().all(|v| *v == 1));
    assert!(
        fetched[rotated_at..].iter().all(|v| *v == 2),
        "after the rotation, only the new credentials: {fetched:?}"
    );
    assert!(
        fetched.len() - rotated_at >= 3,
        "tokens were fetched after it"
    );
    let token = keyed.get(&"merchant-7").await.unwrap();
    assert_eq!(secret(&token), "v2");
}

#[tokio::test]
async fn an_unknown_key_is_an_error_never_another_keys_token() {
    let keyed = KeyedCache::<String>::builder()
        .with_key_label(|key| format!("merchant {}", key.len()))
        .build();
    keyed
        .register(
            "known".into(),
            TokenCache::builder(|| async { Ok::<_, FetchError>(Token::new("known-token")) }),
        )
        .unwrap();
    assert_eq!(
        secret(&keyed.get(&"known".into()).await.unwrap()),
        "known-token"
    );
    let error = keyed.get(&"s3cr3t-key".into()).await.unwrap_err();
    assert!(
        matches!(&error, Error::UnknownKey { key } if key == "merchant 10"),
        "{error}"
    );
    assert!(!error.chain().contains("s3cr3t"));

    // A factory that refuses a key: typed, and the key is named by its label only.
    let keyed = KeyedCache::<String>::builder()
        .with_factory(|key: &String| {
            if key.starts_with("m-") {
                Ok(TokenCache::builder(|| async {
                    Ok::<_, FetchError>(Token::new("t"))
                }))
            } else {
                Err(ConfigError::Invalid {
                    name: "merchant",
                    reason: "is not a merchant id",
                })
            }
        })
        .build();
    assert!(keyed.get(&"m-1".into()).await.is_ok());
    let error = keyed.get(&"password=hunter2".into()).await.unwrap_err();
    assert!(matches!(error, Error::KeyConfig { .. }), "{error}");
    assert!(!error.chain().contains("hunter2"), "{}", error.chain());
    assert!(error.chain().contains("key-"), "{}", error.chain());
}

#[tokio::test]
async fn the_summary_counts_keys_by_state_and_names_the_worst() {
    let keyed = KeyedCache::<u32>::builder()
        .with_factory(|key: &u32| {
            let key = *key;
            Ok(TokenCache::builder(move || async move {
                match key {
                    0 => Err(FetchError::rejected("bad credentials")),
                    1 => Err(FetchError::transient("issuer down")),
                    _ => Ok(Token::new("t")),
                }
            }))
        })
        .with_key_label(|key| format!("merchant-{key}"))
        .build();
    for key in 0..10 {
        let _ = keyed.get(&key).await;
    }
    let summary = keyed.summary(2);
    assert_eq!(summary.keys, 10);
    assert_eq!(
        (summary.fresh, summary.rejected, summary.backing_off),
        (8, 1, 1)
    );
    let worst: Vec<&str> = summary.worst.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(worst, ["merchant-0", "merchant-1"]);
    assert!(
        summary.worst[0]
            .1
            .last_error
            .as_ref()
            .unwrap()
            .is_rejected()
    );
}

#[tokio::test]
async fn revoke_and_remove_act_on_one_key_only() {
    let issuer = Issuer::default();
    let keyed = issuer.keyed(100, Duration::ZERO);
    for key in 0..3 {
        keyed.get(&key).await.unwrap();
    }
    assert!(keyed.revoke(&1));
    assert_eq!(secret(&keyed.get(&1).await.unwrap()), "1-2");
    assert_eq!(secret(&keyed.get(&0).await.unwrap()), "0-1");
    assert!(keyed.remove(&2));
    assert_eq!(keyed.len(), 2);
    assert_eq!(secret(&keyed.get(&2).await.unwrap()), "2-2", "made again");
    assert!(!keyed.revoke(&99));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_keys_expiring_together_stay_within_the_budget_and_none_is_served_expired() {
    // Every key's token expires at the same instant, 300 s after the start, however late it
    // was fetched; the issuer takes 50 ms per call; the budget allows 50 calls per second.
    let start = tokio::time::Instant::now();
    let expires_at = start + Duration::from_secs(300);
    let calls = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let budget = tokenwarden_core::RefreshBudget::per_second(50);
    let keyed = {
        let calls = Arc::clone(&calls);
        KeyedCache::<u32>::builder()
            .with_capacity(2_000)
            .with_refresh_budget(budget.clone())
            .with_factory(move |key: &u32| {
                let (key, calls) = (*key, Arc::clone(&calls));
                Ok(TokenCache::builder(move || {
                    let calls = Arc::clone(&calls);
                    async move {
                        let now = tokio::time::Instant::now();
                        calls.lock().unwrap().push(now - start);
                        sleep(Duration::from_millis(50)).await;
                        // The first tokens all expire at 300 s, however late they were
                        // fetched; renewed ones live 300 s. The token names the instant it
                        // expires at (ms since the start).
                        let left = if now - start < Duration::from_secs(60) {
                            expires_at - now
                        } else {
                            Duration::from_secs(300)
                        };
                        let until = (now + left - start).as_millis();
                        Ok::<_, FetchError>(
                            Token::new(format!("k{key}.{until}")).with_expires_in(left),
                        )
                    }
                }))
            })
            .build()
    };
    // Callers use every key every 2 s for 400 s, all keys at once each time.
    let mut served = 0u64;
    for _ in 0..200 {
        let mut tasks = Vec::new();
        for key in 0..1_000u32 {
            let keyed = keyed.clone();
            tasks.push(tokio::spawn(async move { keyed.get(&key).await }));
        }
        for task in tasks {
            let token = task.await.unwrap().expect("every key gets a token");
            let until: u128 = secret(&token).split('.').nth(1).unwrap().parse().unwrap();
            let now = (tokio::time::Instant::now() - start).as_millis();
            assert!(
                now < until,
                "a token served at {now} ms expired at {until} ms"
            );
            served += 1;
        }
        sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(served, 200_000);
    let mut calls = calls.lock().unwrap().clone();
    calls.sort();
    // Never more than the budget in any one second (calls 1/50 s apart).
    let busiest = calls
        .iter()
        .enumerate()
        .map(|(i, t)| {
            calls[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(busiest <= 50, "{busiest} calls in one second");
    // One first fetch per key, and each of the tokens expiring together at 300 s renewed once
    // before then (the renewed ones are refreshed again from 414 s on, past the first 400 s).
    let before_400 = calls
        .iter()
        .filter(|t| **t < Duration::from_secs(400))
        .count();
    assert_eq!(before_400, 2_000, "issuer calls in the first 400 s");
    assert_eq!(budget.granted(), calls.len() as u64);
    println!(
        "1,000 keys, 50 calls/s: {} calls, busiest second {busiest}, first fetches done by {:?}, renewals from {:?} to {:?}",
        calls.len(),
        calls[999],
        calls[1000],
        calls[1999]
    );
}

#[tokio::test(start_paused = true)]
async fn an_issuers_retry_after_holds_every_key_of_its_budget() {
    let start = tokio::time::Instant::now();
    let calls = Arc::new(Mutex::new(Vec::<(u32, Duration)>::new()));
    let busy = Arc::new(AtomicBool::new(true));
    let budget = tokenwarden_core::RefreshBudget::per_second(2);
    let keyed = {
        let (calls, busy) = (Arc::clone(&calls), Arc::clone(&busy));
        KeyedCache::<u32>::builder()
            .with_refresh_budget(budget)
            .with_factory(move |key: &u32| {
                let (key, calls, busy) = (*key, Arc::clone(&calls), Arc::clone(&busy));
                Ok(TokenCache::builder(move || {
                    calls.lock().unwrap().push((key, start.elapsed()));
                    let busy = key == 0 && busy.swap(false, SeqCst);
                    async move {
                        if busy {
                            return Err(FetchError::transient("503")
                                .with_retry_after(Duration::from_secs(5)));
                        }
                        Ok(Token::new(format!("t{key}")).with_expires_in(Duration::from_secs(600)))
                    }
                }))
            })
            .build()
    };
    // Key 0 is told to come back in 5 s: keys 1-3, asked right after, wait for it too.
    assert!(keyed.get(&0).await.is_err());
    let mut tasks = Vec::new();
    for key in 1..4u32 {
        let keyed = keyed.clone();
        tasks.push(tokio::spawn(async move { keyed.get(&key).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls[0], (0, Duration::ZERO));
    for (key, at) in &calls[1..] {
        assert!(
            *at >= Duration::from_secs(5),
            "key {key} asked at {at:?}, before the hint"
        );
    }
    // Spaced by the budget: 2 per second.
    assert!(calls[3].1 - calls[1].1 >= Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_keys_are_driven_by_one_task_and_still_retired_on_time() {
    let issuer = Issuer::default();
    let keyed = issuer.keyed(2_000, Duration::ZERO);
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = alive();
    for key in 0..1_000 {
        keyed.get(&key).await.unwrap();
    }
    tokio::task::yield_now().await;
    // One task ticks every key (a task per key before).
    assert!(
        alive() <= before + 1,
        "{} tasks for 1,000 keys",
        alive() - before
    );
    // Unused, each key's token is retired at its mandatory point (600 s tokens): on the
    // paused clock only the driver sees time pass, and the next get fetches anew.
    sleep(Duration::from_secs(601)).await;
    for key in 0..1_000 {
        assert_eq!(secret(&keyed.get(&key).await.unwrap()), format!("{key}-2"));
    }
    assert_eq!(issuer.total(), 2_000);
    let summary = keyed.summary(0);
    assert_eq!(summary.fresh, 1_000);
    // Many more requests to tick than keys (each token's install, advisory point, refresh):
    // the queue is tidied, not grown without bound; and the task ends with the keyed cache.
    for _ in 0..5 {
        for key in 0..1_000 {
            keyed.revoke(&key);
            keyed.get(&key).await.unwrap();
        }
    }
    tokio::task::yield_now().await;
    assert!(alive() <= before + 1);
    drop(keyed);
    tokio::task::yield_now().await;
    assert_eq!(alive(), before, "the driver ends with its keyed cache");
}

#[test]
fn keys_driven_on_a_runtime_that_ended_are_driven_again_on_the_next() {
    let issuer = Issuer::default();
    let keyed = issuer.keyed(100, Duration::ZERO);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    // The first runtime fetches every key's token and runs the keys' driver; then it ends.
    runtime().block_on(async {
        for key in 0..10 {
            keyed.get(&key).await.unwrap();
        }
    });
    // With its driver gone, a key's token is no longer served from the hot path (nobody
    // would retire it on a paused clock)...
    assert!(keyed.cached(&3).is_none());
    // ...but it is still held: a second runtime serves it without a fetch and drives the keys
    // again. Past the tokens' mandatory point on its paused clock, every key is fetched anew,
    // once.
    runtime().block_on(async {
        for key in 0..10 {
            assert_eq!(secret(&keyed.get(&key).await.unwrap()), format!("{key}-1"));
        }
        sleep(Duration::from_secs(601)).await;
        for key in 0..10 {
            assert_eq!(secret(&keyed.get(&key).await.unwrap()), format!("{key}-2"));
        }
    });
    assert_eq!(issuer.total(), 20);
}

/// A thread serves its copies of a key's token without reading the key's cache while no key
/// changed; a change to one key is seen by that thread's copy of it even after the thread has
/// since used (and re-checked) its copies of other keys.
#[test]
fn a_change_to_one_key_reaches_a_threads_copy_of_it_past_its_other_keys() {
    let issuer = Issuer::default();
    let keyed = issuer.keyed(100, Duration::ZERO);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = runtime.block_on(async {
        let first = keyed.get(&1).await.unwrap();
        keyed.get(&2).await.unwrap();
        first
    });
    // Served from this thread's copies, with nothing changed.
    assert_eq!(keyed.cached(&1).map(|s| secret(&s)).as_deref(), Some("1-1"));
    assert_eq!(keyed.cached(&2).map(|s| secret(&s)).as_deref(), Some("2-1"));

    // Another thread rejects key 1's token.
    std::thread::scope(|s| {
        s.spawn(|| assert!(keyed.invalidate(&1, first.id())));
    });

    // Key 2's copy is checked first (and found current); key 1's is not served after that.
    assert_eq!(keyed.cached(&2).map(|s| secret(&s)).as_deref(), Some("2-1"));
    assert!(
        keyed.cached(&1).is_none(),
        "a rejected token served from a copy"
    );
    runtime.block_on(async {
        assert_eq!(secret(&keyed.get(&1).await.unwrap()), "1-2");
        assert_eq!(secret(&keyed.get(&2).await.unwrap()), "2-1");
    });
    assert_eq!((issuer.calls(1), issuer.calls(2)), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_key_removed_while_its_fetch_runs_leaves_no_copy_of_that_fetch_to_serve() {
    // One thread: the fetch and the look-up share its copies.
    let issuer = Issuer::default();
    let keyed = issuer.keyed(100, Duration::from_millis(100));
    let getter = keyed.clone();
    let get = tokio::spawn(async move { getter.get(&1).await });
    sleep(Duration::from_millis(10)).await;
    // Removed while its fetch runs: the fetch ends in the removed key's cache.
    assert!(keyed.remove(&1));
    let stale = get.await.unwrap().unwrap();
    assert!(
        keyed.cached(&1).is_none(),
        "a copy of {} from the removed key's cache is served, which invalidate cannot reach",
        secret(&stale)
    );
    let fresh = keyed.get(&1).await.unwrap();
    assert_ne!(fresh.id(), stale.id());
    assert!(keyed.invalidate(&1, fresh.id()), "the key's current token");
}

#[tokio::test]
async fn a_keyed_cache_holds_as_many_keys_as_its_capacity_without_evicting_one() {
    // The map is split in shards; keys do not hash evenly into them, and a shard given only
    // its even share evicts a key while the whole holds fewer than the capacity (a merchant's
    // token fetched twice in a run of 200 merchants with capacity 200).
    for capacity in [64u32, 200, 700, 3_000] {
        {
            let issuer = Issuer::default();
            let keyed = issuer.keyed(capacity as usize, Duration::ZERO);
            for _ in 0..2 {
                for key in 0..capacity {
                    keyed.get(&key).await.unwrap();
                }
            }
            assert_eq!(keyed.len(), capacity as usize, "capacity {capacity}");
            assert_eq!(
                issuer.total(),
                capacity as usize,
                "capacity {capacity}: one fetch per key, none evicted and made again"
            );
            // Still bounded: at most 16% over the capacity, however many keys come.
            for key in capacity..2 * capacity {
                keyed.get(&key).await.unwrap();
            }
            let bound = capacity as usize * 116 / 100;
            assert!(
                keyed.len() <= bound,
                "{} keys held, bound {bound}",
                keyed.len()
            );
        }
    }
}
