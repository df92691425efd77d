//! The cached hot path under contention: `TokenCache::get` against the common hand-rolled
//! designs holding the same token, at 1, 2 and 4 threads, in one run: `std::sync::RwLock`,
//! `std::sync::Mutex` and `tokio::sync::RwLock` around an `Arc<Entry>`, and `arc_swap::ArcSwap`
//! read both ways, `load` (a guard, no reference count touched while few are held) and
//! `load_full` (an `Arc` clone, as the locks return); and, as the floor under any design that
//! hands out an owned token, a clone of an `Arc` the thread owns alone (`thread_arc_clone`).
//!
//! Each iteration: every thread obtains the token and its prebuilt `Authorization` value once.
//! Reported time is per operation per thread (lower is better; throughput = threads / time).
//!
//! `cargo bench --bench contention`

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use support::{JWT, poll_once};
use tokenwarden::core::{FetchError, Token, TokenCache};

/// What the hand-rolled designs hold: the token and its prebuilt header value.
struct Entry {
    _token: String,
    authorization: HeaderValue,
}

fn entry() -> Arc<Entry> {
    Arc::new(Entry {
        _token: JWT.to_owned(),
        authorization: HeaderValue::from_str(&format!("Bearer {JWT}")).unwrap(),
    })
}

thread_local! {
    /// Each thread's own `Arc`: cloning and dropping it is the least any cache handing out an
    /// owned token pays (an uncontended reference-count increment and decrement), before it
    /// has looked anything up or checked any expiry.
    static OWN: Arc<Entry> = entry();
}

/// Runs `op` `iters` times on each of `threads` threads at once; returns the wall time.
fn contended<S: Sync>(threads: usize, iters: u64, shared: &S, op: impl Fn(&S) + Sync) -> Duration {
    let barrier = Barrier::new(threads + 1);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                op(shared); // warm any per-thread state
                barrier.wait();
                for _ in 0..iters {
                    op(shared);
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

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cache = TokenCache::builder(|| async {
        Ok::<_, FetchError>(Token::new(JWT).with_expires_in(Duration::from_secs(24 * 3600)))
    })
    .build()
    .unwrap();
    runtime.block_on(cache.get()).unwrap();

    let rwlock = RwLock::new(entry());
    let mutex = Mutex::new(entry());
    let tokio_rwlock = tokio::sync::RwLock::new(entry());
    let arc_swap = ArcSwap::new(entry());

    let mut group = c.benchmark_group("contention");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for threads in [1, 2, 4] {
        group.bench_with_input(
            BenchmarkId::new("tokenwarden", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &cache, |cache| {
                        let snapshot = poll_once(cache.get()).unwrap();
                        black_box(snapshot.headers().next());
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("std_rwlock", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &rwlock, |lock| {
                        let entry = Arc::clone(&lock.read().unwrap());
                        black_box(&entry.authorization);
                    })
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("std_mutex", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                contended(n, iters, &mutex, |lock| {
                    let entry = Arc::clone(&lock.lock().unwrap());
                    black_box(&entry.authorization);
                })
            });
        });
        group.bench_with_input(
            BenchmarkId::new("tokio_rwlock", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &tokio_rwlock, |lock| {
                        let entry = Arc::clone(&poll_once(lock.read()));
                        black_box(&entry.authorization);
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("arc_swap_load", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &arc_swap, |swap| {
                        let entry = swap.load();
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
                    contended(n, iters, &(), |()| {
                        let entry = OWN.with(Arc::clone);
                        black_box(&entry.authorization);
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("arc_swap_load_full", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    contended(n, iters, &arc_swap, |swap| {
                        let entry = swap.load_full();
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
