//! Requests per second through hyper-util's client to a loopback hyper server, with the
//! `TokenLayer` (token cached) and, as the baseline, the same requests with the same cache's
//! header set by hand — in the same run, and interleaved batch by batch.
//!
//! `cargo bench --bench tower_overhead`
//!
//! Two layered clients: the default, which copies bodies aside as they are sent (the client takes
//! `RequestBody<Full<Bytes>>`), and `cloning_bodies()`, whose client keeps `Full<Bytes>`.
//!
//! Two more layered clients whose tokens are DPoP-bound (RFC 9449), one proving with ES256 and
//! one with EdDSA: each request carries a fresh signed proof, the cost of a bound token.
//!
//! `TOWER_OVERHEAD_COUNT=<layer|cloning|dpop_es256|dpop_eddsa|head|by_hand>:<requests>` (`head`: by hand, plus the copy
//! of the request head any replay needs) instead sends that many sequential requests
//! through one variant on one thread and exits, for counting instructions with
//! `valgrind --tool=callgrind` (deterministic, unlike wall time on a shared machine).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::{BODY, concurrently, interleaved, report};
use tokenwarden_gateways::jose::Algorithm;
use tokenwarden_tower::{CloneBody, RequestBody, TokenLayer, TokenService};
use tower::{ServiceBuilder, ServiceExt};

type Bare = Client<HttpConnector, Full<Bytes>>;
type Layered = TokenService<Client<HttpConnector, RequestBody<Full<Bytes>>>>;
type Cloning = TokenService<Bare, CloneBody>;

fn request(addr: SocketAddr, header: Option<&HeaderValue>) -> Request<Full<Bytes>> {
    let mut request = Request::post(format!("http://{addr}/v1/payments"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    if let Some(header) = header {
        request.headers_mut().insert(AUTHORIZATION, header.clone());
    }
    request
}

/// A layered client whose tokens are DPoP-bound, proving with `algorithm`.
async fn dpop_layered(addr: SocketAddr, algorithm: Algorithm) -> Layered {
    let cache = support::dpop_cache(algorithm);
    cache.get().await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new()
        .layer(TokenLayer::new(
            cache,
            tokenwarden::Scope::origin(&format!("http://{addr}")).unwrap(),
        ))
        .service(client)
}

async fn setup() -> (SocketAddr, HeaderValue, Bare, Layered, Cloning) {
    let addr = support::server().await;
    let cache = support::cache();
    let snapshot = cache.get().await.unwrap();
    let by_hand = snapshot.headers().next().unwrap().1.clone();
    let bare = Client::builder(TokioExecutor::new()).build_http();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let layer = TokenLayer::new(
        cache,
        tokenwarden::Scope::origin(&format!("http://{addr}")).unwrap(),
    );
    let cloning = ServiceBuilder::new()
        .layer(layer.clone().cloning_bodies())
        .service(bare.clone());
    let layered = ServiceBuilder::new().layer(layer).service(client);
    (addr, by_hand, bare, layered, cloning)
}

async fn through_layer(layered: &Layered, addr: SocketAddr) {
    let svc = layered.clone();
    concurrently(move || {
        let svc = svc.clone();
        async move { drop(svc.oneshot(request(addr, None)).await.unwrap()) }
    })
    .await;
}

async fn cloning(svc: &Cloning, addr: SocketAddr) {
    let svc = svc.clone();
    concurrently(move || {
        let svc = svc.clone();
        async move { drop(svc.oneshot(request(addr, None)).await.unwrap()) }
    })
    .await;
}

async fn by_hand(bare: &Bare, addr: SocketAddr, header: &HeaderValue) {
    let (svc, header) = (bare.clone(), header.clone());
    concurrently(move || {
        let (svc, header) = (svc.clone(), header.clone());
        async move { drop(svc.oneshot(request(addr, Some(&header))).await.unwrap()) }
    })
    .await;
}

fn count_only(variant: &str, n: usize) {
    support::runtime(None).block_on(async {
        let (addr, header, bare, layered, cloned) = setup().await;
        let layered = match variant {
            "dpop_es256" => dpop_layered(addr, Algorithm::Es256).await,
            "dpop_eddsa" => dpop_layered(addr, Algorithm::EdDsa).await,
            _ => layered,
        };
        for _ in 0..n {
            if variant == "layer" || variant.starts_with("dpop") {
                drop(layered.clone().oneshot(request(addr, None)).await.unwrap());
            } else if variant == "cloning" {
                drop(cloned.clone().oneshot(request(addr, None)).await.unwrap());
            } else if variant == "head" {
                // By hand, plus the copy of the head any replay needs, boxed until the answer.
                let (parts, body) = request(addr, Some(&header)).into_parts();
                let kept = Box::new(parts.clone());
                let request = Request::from_parts(parts, body);
                drop(bare.clone().oneshot(request).await.unwrap());
                drop(kept);
            } else {
                drop(
                    bare.clone()
                        .oneshot(request(addr, Some(&header)))
                        .await
                        .unwrap(),
                );
            }
        }
    });
}

fn bench(c: &mut Criterion) {
    if let Some((variant, n)) = support::count_mode("TOWER_OVERHEAD_COUNT") {
        return count_only(&variant, n);
    }
    let runtime = support::runtime(Some(2));
    let (addr, header, bare, layered, cloned) = runtime.block_on(setup());
    let es256 = runtime.block_on(dpop_layered(addr, Algorithm::Es256));
    let eddsa = runtime.block_on(dpop_layered(addr, Algorithm::EdDsa));
    runtime.block_on(async {
        by_hand(&bare, addr, &header).await;
        through_layer(&layered, addr).await;
        cloning(&cloned, addr).await;
        through_layer(&es256, addr).await;
        through_layer(&eddsa, addr).await;
    });

    let mut group = c.benchmark_group("tower_overhead");
    group
        .throughput(Throughput::Elements(support::BATCH as u64))
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    group.bench_function("header_set_by_hand", |b| {
        b.to_async(&runtime).iter(|| by_hand(&bare, addr, &header))
    });
    group.bench_function("with_token_layer", |b| {
        b.to_async(&runtime).iter(|| through_layer(&layered, addr))
    });
    group.bench_function("with_token_layer_cloning_bodies", |b| {
        b.to_async(&runtime).iter(|| cloning(&cloned, addr))
    });
    group.bench_function("with_token_layer_dpop_es256", |b| {
        b.to_async(&runtime).iter(|| through_layer(&es256, addr))
    });
    group.bench_function("with_token_layer_dpop_eddsa", |b| {
        b.to_async(&runtime).iter(|| through_layer(&eddsa, addr))
    });
    group.finish();

    let rounds = 600;
    let ratio = runtime.block_on(interleaved(
        rounds,
        || through_layer(&layered, addr),
        || by_hand(&bare, addr, &header),
    ));
    report(
        "tower_overhead/interleaved: layer / header set by hand",
        rounds,
        ratio,
    );
    let ratio = runtime.block_on(interleaved(
        rounds,
        || cloning(&cloned, addr),
        || by_hand(&bare, addr, &header),
    ));
    report(
        "tower_overhead/interleaved: layer cloning bodies / header set by hand",
        rounds,
        ratio,
    );
    for (name, dpop) in [("ES256", &es256), ("EdDSA", &eddsa)] {
        let ratio = runtime.block_on(interleaved(
            rounds / 2,
            || through_layer(dpop, addr),
            || through_layer(&layered, addr),
        ));
        report(
            &format!("tower_overhead/interleaved: layer with DPoP {name} / layer with bearer"),
            rounds / 2,
            ratio,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
