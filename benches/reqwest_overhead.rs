//! Requests per second through a `reqwest_middleware::ClientWithMiddleware` to a loopback hyper
//! server, with the `TokenMiddleware` (token cached) and, as the baseline, a bare
//! `ClientWithMiddleware` sending the same requests with the same cache's header set by hand —
//! in the same run, and interleaved batch by batch.
//!
//! `cargo bench --bench reqwest_overhead`
//!
//! The middleware over a cache of DPoP-bound tokens (ES256, EdDSA) is measured beside it: a
//! fresh signed proof per request.
//!
//! `REQWEST_OVERHEAD_COUNT=<middleware|dpop_es256|dpop_eddsa|noop|copy|by_hand>:<requests>` (`noop`: a middleware
//! that does nothing, with the header set by hand: reqwest-middleware's own cost; `copy`: one
//! that only keeps `Request::try_clone`, what any replay needs) instead sends that many sequential
//! requests through one variant on one thread and exits, for `valgrind --tool=callgrind`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::{BODY, Noop, concurrently, interleaved, report};
use tokenwarden_gateways::jose::Algorithm;
use tokenwarden_reqwest::TokenMiddleware;

async fn send(client: ClientWithMiddleware, addr: SocketAddr, header: Option<HeaderValue>) {
    let mut request = client
        .post(format!("http://{addr}/v1/payments"))
        .header("content-type", "application/json")
        .body(BODY);
    if let Some(header) = header {
        request = request.header(AUTHORIZATION, header);
    }
    let response = request.send().await.unwrap();
    let _ = response.bytes().await.unwrap();
}

async fn setup() -> (
    SocketAddr,
    HeaderValue,
    ClientWithMiddleware,
    ClientWithMiddleware,
) {
    let addr = support::server().await;
    let cache = support::cache();
    let snapshot = cache.get().await.unwrap();
    let by_hand = snapshot.headers().next().unwrap().1.clone();
    let bare = ClientBuilder::new(reqwest::Client::new()).build();
    let scope = tokenwarden::Scope::origin(&format!("http://{addr}")).unwrap();
    let with_middleware = ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(cache, scope))
        .build();
    (addr, by_hand, bare, with_middleware)
}

/// The middleware over a cache of tokens bound to a DPoP key proving with `algorithm`.
async fn dpop_middleware(
    addr: SocketAddr,
    algorithm: tokenwarden_gateways::jose::Algorithm,
) -> ClientWithMiddleware {
    let cache = support::dpop_cache(algorithm);
    cache.get().await.unwrap();
    let scope = tokenwarden::Scope::origin(&format!("http://{addr}")).unwrap();
    ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(cache, scope))
        .build()
}

async fn batch(client: &ClientWithMiddleware, addr: SocketAddr, header: Option<&HeaderValue>) {
    let (client, header) = (client.clone(), header.cloned());
    concurrently(move || send(client.clone(), addr, header.clone())).await;
}

/// A middleware that only keeps what a replay needs (`Request::try_clone`) and sends: the
/// floor under any replaying middleware.
struct KeepsCopy;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for KeepsCopy {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let copy = request.try_clone();
        let response = next.run(request, extensions).await;
        drop(copy);
        response
    }
}

fn count_only(variant: &str, n: usize) {
    support::runtime(None).block_on(async {
        let (addr, header, bare, with_middleware) = setup().await;
        let with_middleware = match variant {
            "dpop_es256" => dpop_middleware(addr, Algorithm::Es256).await,
            "dpop_eddsa" => dpop_middleware(addr, Algorithm::EdDsa).await,
            _ => with_middleware,
        };
        let noop = ClientBuilder::new(reqwest::Client::new())
            .with(Noop)
            .build();
        let copy = ClientBuilder::new(reqwest::Client::new())
            .with(KeepsCopy)
            .build();
        for _ in 0..n {
            if variant == "middleware" || variant.starts_with("dpop") {
                send(with_middleware.clone(), addr, None).await;
            } else if variant == "noop" {
                send(noop.clone(), addr, Some(header.clone())).await;
            } else if variant == "copy" {
                send(copy.clone(), addr, Some(header.clone())).await;
            } else {
                send(bare.clone(), addr, Some(header.clone())).await;
            }
        }
    });
}

fn bench(c: &mut Criterion) {
    if let Some((variant, n)) = support::count_mode("REQWEST_OVERHEAD_COUNT") {
        return count_only(&variant, n);
    }
    let runtime = support::runtime(Some(2));
    let (addr, header, bare, with_middleware) = runtime.block_on(setup());
    let es256 = runtime.block_on(dpop_middleware(addr, Algorithm::Es256));
    let eddsa = runtime.block_on(dpop_middleware(addr, Algorithm::EdDsa));
    runtime.block_on(async {
        batch(&bare, addr, Some(&header)).await;
        batch(&with_middleware, addr, None).await;
        batch(&es256, addr, None).await;
        batch(&eddsa, addr, None).await;
    });

    let mut group = c.benchmark_group("reqwest_overhead");
    group
        .throughput(Throughput::Elements(support::BATCH as u64))
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    group.bench_function("header_set_by_hand", |b| {
        b.to_async(&runtime)
            .iter(|| batch(&bare, addr, Some(&header)))
    });
    group.bench_function("with_token_middleware", |b| {
        b.to_async(&runtime)
            .iter(|| batch(&with_middleware, addr, None))
    });
    group.bench_function("with_token_middleware_dpop_es256", |b| {
        b.to_async(&runtime).iter(|| batch(&es256, addr, None))
    });
    group.bench_function("with_token_middleware_dpop_eddsa", |b| {
        b.to_async(&runtime).iter(|| batch(&eddsa, addr, None))
    });
    group.finish();

    let rounds = 600;
    let ratio = runtime.block_on(interleaved(
        rounds,
        || batch(&with_middleware, addr, None),
        || batch(&bare, addr, Some(&header)),
    ));
    report(
        "reqwest_overhead/interleaved: middleware / header set by hand",
        rounds,
        ratio,
    );
    for (name, dpop) in [("ES256", &es256), ("EdDSA", &eddsa)] {
        let ratio = runtime.block_on(interleaved(
            rounds / 2,
            || batch(dpop, addr, None),
            || batch(&with_middleware, addr, None),
        ));
        report(
            &format!("reqwest_overhead/interleaved: middleware with DPoP {name} / with bearer"),
            rounds / 2,
            ratio,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
