//! What the overhead benchmarks share: a loopback server, the token, and the interleaved ratio.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokenwarden::{FetchError, Token, TokenCache};

/// Concurrent requests per batch: enough to keep both cores busy, so that per-request CPU
/// cost shows rather than hiding in network waits.
pub const BATCH: usize = 32;

/// A small JSON body, as payment APIs take.
pub const BODY: &str =
    r#"{"amount":1999,"currency":"EUR","reference":"order-42","channel":"ECOM"}"#;

/// A loopback HTTP/1 server that reads each request's body and answers a small JSON body.
pub async fn server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let _ = request.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"ok\":true}",
                        ))))
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

/// A cache holding a day-long JWT-sized token.
pub fn cache() -> TokenCache {
    TokenCache::new(|| async {
        Ok::<_, FetchError>(
            Token::new("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl")
                .with_expires_in(Duration::from_secs(86_400)),
        )
    })
}

/// A cache of the same token bound to a DPoP key (ES256 or EdDSA, from the test keys): every
/// request through a layer gets a fresh proof.
pub fn dpop_cache(algorithm: tokenwarden_gateways::jose::Algorithm) -> TokenCache {
    use tokenwarden_gateways::jose::{Algorithm, SigningKey};
    let file = if algorithm == Algorithm::Es256 {
        "p256.pem"
    } else {
        "ed25519.pem"
    };
    let pem = std::fs::read_to_string(format!(
        "{}/crates/tokenwarden-gateways/tests/data/keys/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let key = tokenwarden_gateways::dpop::DpopKey::new(
        SigningKey::from_pkcs8_pem(algorithm, &pem).unwrap(),
    );
    TokenCache::builder(|| async {
        Ok::<_, FetchError>(
            Token::new("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl")
                .with_expires_in(Duration::from_secs(86_400)),
        )
    })
    .with_presentation(tokenwarden::Presentation::dpop(std::sync::Arc::new(key)))
    .build()
    .unwrap()
}

/// The median and quartiles, over `rounds` rounds, of (time of `a`) / (time of `b`), the two
/// run back to back in alternating order so that the machine's noise falls on both alike.
pub async fn interleaved<A, B, FA, FB>(rounds: usize, mut a: FA, mut b: FB) -> [f64; 3]
where
    FA: FnMut() -> A,
    FB: FnMut() -> B,
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (mut a_time, mut b_time) = (Duration::ZERO, Duration::ZERO);
        for pass in 0..2 {
            let start = Instant::now();
            if (round + pass) % 2 == 0 {
                a().await;
                a_time += start.elapsed();
            } else {
                b().await;
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

/// Prints an interleaved ratio as one line.
pub fn report(name: &str, rounds: usize, [q1, median, q3]: [f64; 3]) {
    println!(
        "{name} = {median:.4} (median of {rounds} rounds, quartiles {q1:.4}..{q3:.4}): overhead {:+.2} %",
        (median - 1.0) * 100.0
    );
}

/// Runs `batch` concurrent copies of the future `send` makes, on the current runtime.
pub async fn concurrently<F>(send: impl Fn() -> F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..BATCH).map(|_| tokio::spawn(send())).collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// `<variant>:<requests>` from the environment variable `var`, when set: the benchmark then
/// sends that many sequential requests through one variant and exits, for counting
/// instructions with `valgrind --tool=callgrind`.
pub fn count_mode(var: &str) -> Option<(String, usize)> {
    let spec = std::env::var(var).ok()?;
    let (variant, n) = spec.split_once(':').expect("<variant>:<requests>");
    Some((variant.to_owned(), n.parse().expect("a number of requests")))
}

/// A runtime with `workers` worker threads, or a single-threaded one for `None` (which keeps
/// instruction counts repeatable).
pub fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    match workers {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .unwrap()
}

/// A reqwest middleware that does nothing: what reqwest-middleware itself costs per
/// middleware (it boxes each middleware's future).
pub struct Noop;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Noop {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        next.run(request, extensions).await
    }
}

/// A ~200-byte JWT-shaped token, as the contention benchmarks hand out.
pub const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtZXJjaGFudC0xMjM0NSIsInNjb3BlIjoicGF5bWVudHMiLCJleHAiOjQxMDI0NDQ4MDB9.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// Polls `f` once, for a path that must not wait (the cached get).
pub fn poll_once<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the benchmarked path had to wait"),
    }
}
