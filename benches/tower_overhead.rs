//! Requests per second through hyper-util's client to a loopback hyper server, with the
//! `TokenLayer` (token cached) and without it, in the same run.
//!
//! Each iteration sends a batch of 32 concurrent POSTs with a small JSON body, so both cores are
//! busy and the layer's CPU cost shows rather than hiding in network waits.
//!
//! `cargo bench --bench tower_overhead --features tower`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenwarden::tower::{RequestBody, TokenLayer, TokenService};
use tokenwarden::{FetchError, Token, TokenCache};
use tower::{Service, ServiceBuilder, ServiceExt};

const BATCH: usize = 32;
const BODY: &str = r#"{"amount":1999,"currency":"EUR","reference":"order-42","channel":"ECOM"}"#;

async fn server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let authorized = request.headers().contains_key("authorization");
                        let _ = request.into_body().collect().await;
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                        if !authorized {
                            // both variants get the same answer; only the header differs
                            *response.status_mut() = StatusCode::OK;
                        }
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn request(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/v1/payments"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

/// The same request with the token header set by hand, as code without the layer does.
fn request_with_header(addr: SocketAddr, header: &HeaderValue) -> Request<Full<Bytes>> {
    let mut r = request(addr);
    r.headers_mut().insert(AUTHORIZATION, header.clone());
    r
}

/// Sends one batch of concurrent requests through `svc`, with the header set by hand if given.
async fn batch<S>(svc: &S, addr: SocketAddr, header: Option<&HeaderValue>)
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Response: Send,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let mut tasks = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let svc = svc.clone();
        let request = match header {
            Some(h) => request_with_header(addr, h),
            None => request(addr),
        };
        tasks.push(tokio::spawn(
            async move { svc.oneshot(request).await.unwrap() },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The median, over `rounds` interleaved rounds, of (time through `a`) / (time through `b`),
/// and its quartiles. Interleaving makes the machine's noise fall on both alike.
async fn interleaved<A, B>(
    rounds: usize,
    addr: SocketAddr,
    a: (&A, Option<&HeaderValue>),
    b: (&B, Option<&HeaderValue>),
) -> [f64; 3]
where
    A: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    A::Response: Send,
    A::Error: std::fmt::Debug + Send,
    A::Future: Send,
    B: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    B::Response: Send,
    B::Error: std::fmt::Debug + Send,
    B::Future: Send,
{
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (mut a_time, mut b_time) = (Duration::ZERO, Duration::ZERO);
        for pass in 0..2 {
            let start = std::time::Instant::now();
            if (round + pass) % 2 == 0 {
                batch(a.0, addr, a.1).await;
                a_time += start.elapsed();
            } else {
                batch(b.0, addr, b.1).await;
                b_time += start.elapsed();
            }
        }
        ratios.push(a_time.as_secs_f64() / b_time.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    [
        ratios[rounds / 4],
        ratios[rounds / 2],
        ratios[rounds * 3 / 4],
    ]
}

/// `TOWER_OVERHEAD_COUNT=<layer|by_hand|none>:<requests>`: sends that many sequential requests
/// through one variant on a single thread and exits, for counting instructions with
/// `valgrind --tool=callgrind` (deterministic, unlike wall time on a shared machine).
type Bare = Client<HttpConnector, Full<Bytes>>;
type Layered = TokenService<Client<HttpConnector, RequestBody<Full<Bytes>>>>;

/// The server, a cache, the baseline's header (the same cache's token, applied by hand), a
/// bare client and a client with the layer.
async fn setup() -> (SocketAddr, HeaderValue, Bare, Layered) {
    let addr = server().await;
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
    let cache = TokenCache::new(move || async move {
        Ok::<_, FetchError>(Token::new(token).with_expires_in(Duration::from_secs(86_400)))
    });
    let snapshot = cache.get().await.unwrap();
    let by_hand = snapshot.headers().next().unwrap().1.clone();
    let bare = Client::builder(TokioExecutor::new()).build_http();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let layered = ServiceBuilder::new()
        .layer(TokenLayer::new(cache))
        .service(client);
    (addr, by_hand, bare, layered)
}

fn count_only(spec: &str) {
    let (variant, n) = spec.split_once(':').expect("variant:requests");
    let n: usize = n.parse().expect("a number of requests");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (addr, by_hand, bare, layered) = setup().await;
        for _ in 0..n {
            let response = match variant {
                "layer" => layered
                    .clone()
                    .oneshot(request(addr))
                    .await
                    .unwrap()
                    .map(|_| ()),
                "by_hand" => {
                    let request = request_with_header(addr, &by_hand);
                    bare.clone().oneshot(request).await.unwrap().map(|_| ())
                }
                _ => bare
                    .clone()
                    .oneshot(request(addr))
                    .await
                    .unwrap()
                    .map(|_| ()),
            };
            drop(response);
        }
    });
}

fn bench(c: &mut Criterion) {
    if let Ok(spec) = std::env::var("TOWER_OVERHEAD_COUNT") {
        return count_only(&spec);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, by_hand, bare, layered) = runtime.block_on(setup());
    // warm the connections and the token
    runtime.block_on(async {
        batch(&bare, addr, Some(&by_hand)).await;
        batch(&layered, addr, None).await;
    });

    let mut group = c.benchmark_group("tower_overhead");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    group.bench_function("header_set_by_hand", |b| {
        b.to_async(&runtime)
            .iter(|| batch(&bare, addr, Some(&by_hand)))
    });
    group.bench_function("with_token_layer", |b| {
        b.to_async(&runtime).iter(|| batch(&layered, addr, None))
    });
    group.bench_function("no_token_at_all", |b| {
        b.to_async(&runtime).iter(|| batch(&bare, addr, None))
    });
    group.finish();

    let rounds = 600;
    let [q1, median, q3] = runtime.block_on(interleaved(
        rounds,
        addr,
        (&layered, None),
        (&bare, Some(&by_hand)),
    ));
    println!(
        "tower_overhead/interleaved: layer / header set by hand = {median:.4} \
         (median of {rounds} rounds, quartiles {q1:.4}..{q3:.4}): overhead {:+.2} %",
        (median - 1.0) * 100.0
    );
    let [q1, median, q3] =
        runtime.block_on(interleaved(rounds, addr, (&layered, None), (&bare, None)));
    println!(
        "tower_overhead/interleaved: layer / no token at all = {median:.4} \
         (median of {rounds} rounds, quartiles {q1:.4}..{q3:.4}): overhead {:+.2} %",
        (median - 1.0) * 100.0
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
