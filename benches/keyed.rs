//! The keyed cache at scale: 100,000 keys made and used once, then a hot set of 1,000 keys
//! read from 1 and 2 threads; in the same run, the single cache's `get`, a hand-rolled keyed
//! design (`RwLock<HashMap<u64, Arc<Entry>>>`, clone the `Arc`) and the floor under any design
//! that hands out an owned token (a clone of an `Arc` the thread owns alone).
//!
//! Before timing, it prints memory measured as resident-set deltas (`/proc/self/statm`):
//! per idle key (100,000 keys with a token each, nobody reading them), and per per-thread copy
//! (2 threads reading the 1,000 hot keys: at most `with_thread_copies` copies per thread).
//!
//! `cargo bench --bench keyed`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::thread;
use std::time::{Duration, Instant};

mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use support::{JWT, poll_once};
use tokenwarden::core::{FetchError, KeyedCache, Token, TokenCache};

const KEYS: u64 = 100_000;
const HOT: u64 = 1_000;

struct Entry {
    _token: String,
    authorization: HeaderValue,
}

fn entry(key: u64) -> Arc<Entry> {
    let token = format!("{JWT}.{key}");
    Arc::new(Entry {
        authorization: HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        _token: token,
    })
}

thread_local! {
    static OWN: Arc<Entry> = entry(0);
}

/// Runs `op(i)` for `iters` values of `i` on each of `threads` threads at once (thread `t`
/// starts its walk through the hot keys at `t × 500`); returns the wall time.
fn contended<S: Sync>(
    threads: usize,
    iters: u64,
    shared: &S,
    op: impl Fn(&S, u64) + Sync,
) -> Duration {
    let barrier = Barrier::new(threads + 1);
    thread::scope(|s| {
        for t in 0..threads as u64 {
            let (barrier, op) = (&barrier, &op);
            s.spawn(move || {
                for key in 0..HOT {
                    op(shared, key); // warm the per-thread state
                }
                barrier.wait();
                let mut key = t * 500 % HOT;
                for _ in 0..iters {
                    op(shared, key);
                    key += 1;
                    if key == HOT {
                        key = 0;
                    }
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

/// Resident memory now, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let keyed = KeyedCache::<u64>::builder()
        .with_capacity(2 * KEYS as usize)
        .with_factory(|key: &u64| {
            // The source keeps what a real one would (the merchant's id), not a second copy
            // of the token it is about to mint.
            let key = *key;
            Ok(TokenCache::builder(move || async move {
                Ok::<_, FetchError>(
                    Token::new(format!("{JWT}.{key}"))
                        .with_expires_in(Duration::from_secs(24 * 3600)),
                )
            }))
        })
        .build();

    // 100,000 keys made and used once, on a thread that keeps no copies afterwards.
    let before = rss();
    thread::scope(|s| {
        s.spawn(|| {
            runtime.block_on(async {
                for key in HOT..KEYS + HOT {
                    keyed.get(&key).await.unwrap();
                }
            });
        });
    });
    let token_bytes = 2 * (JWT.len() + 7) + "Bearer ".len();
    let per_key = (rss() - before) as f64 / KEYS as f64;
    // The hot keys, made on this thread too.
    runtime.block_on(async {
        for key in 0..HOT {
            keyed.get(&key).await.unwrap();
        }
    });
    // Copies: two fresh threads read the hot keys (each keeps its own copies).
    let before = rss();
    contended(2, 0, &keyed, |keyed, key| {
        black_box(poll_once(keyed.get(&key)).unwrap());
    });
    let per_copy = (rss() - before) as f64 / (2 * HOT) as f64;
    println!(
        "memory: {per_key:.0} B per idle key with its token ({:.0} B beside the token's {token_bytes} B \
         of secret and header value); {per_copy:.0} B per per-thread copy (at most 1,024 per \
         thread by default)",
        per_key - token_bytes as f64
    );

    let single = TokenCache::builder(|| async {
        Ok::<_, FetchError>(Token::new(JWT).with_expires_in(Duration::from_secs(24 * 3600)))
    })
    .build()
    .unwrap();
    runtime.block_on(single.get()).unwrap();
    let map: RwLock<HashMap<u64, Arc<Entry>>> =
        RwLock::new((0..HOT).map(|k| (k, entry(k))).collect());

    let mut group = c.benchmark_group("keyed");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for threads in [1, 2] {
        group.bench_with_input(BenchmarkId::new("keyed_get", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                contended(n, iters, &keyed, |keyed, key| {
                    let snapshot = poll_once(keyed.get(&key)).unwrap();
                    black_box(snapshot.headers().next());
                })
            });
        });
        group.bench_with_input(
            BenchmarkId::new("single_cache_get", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &single, |cache, _| {
                        let snapshot = poll_once(cache.get()).unwrap();
                        black_box(snapshot.headers().next());
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("rwlock_hashmap", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &map, |map, key| {
                        let entry = Arc::clone(&map.read().unwrap()[&key]);
                        black_box(&entry.authorization);
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("thread_arc_clone", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &(), |(), _| {
                        let entry = OWN.with(Arc::clone);
                        black_box(&entry.authorization);
                    })
                });
            },
        );
    }
    group.finish();
    drop(runtime);
}

criterion_group!(benches, bench);
criterion_main!(benches);
