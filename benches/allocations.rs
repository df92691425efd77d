//! Heap allocations per request, counted (dhat's allocator in testing mode): through the
//! tower layer (copying bodies aside, and cloning them), the reqwest middleware, and the same
//! clients with the same cache's header set by hand — for a body-less GET and a JSON POST, to a
//! loopback hyper server in the same process (whose allocations are the same for every row).
//!
//! `cargo bench --bench allocations`
//!
//! A request through a layer must keep what a replay needs — the request head as the caller
//! made it (and, for the reqwest middleware, `Request::try_clone`) — and nothing more: a
//! body-less request keeps no body. The rows "DPoP" are the same layers with a token bound to
//! an ES256 key: a fresh proof per request (its claims, its signature, the header value).

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::{BODY, Noop};
use tokenwarden::Scope;
use tokenwarden_reqwest::TokenMiddleware;
use tokenwarden_tower::{RequestBody, TokenLayer};
use tower::{Service, ServiceExt};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const REQUESTS: u64 = 500;

fn request(addr: SocketAddr, post: bool, header: Option<&HeaderValue>) -> Request<Full<Bytes>> {
    let uri = format!("http://{addr}/v1/payments");
    let mut request = if post {
        Request::post(uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
    } else {
        Request::get(uri).body(Full::default())
    }
    .unwrap();
    if let Some(header) = header {
        request.headers_mut().insert(AUTHORIZATION, header.clone());
    }
    request
}

/// Allocations per request of `send`, after a warm-up.
async fn per_request<F: Future<Output = ()>>(mut send: impl FnMut() -> F) -> f64 {
    for _ in 0..50 {
        send().await;
    }
    let before = dhat::HeapStats::get().total_blocks;
    for _ in 0..REQUESTS {
        send().await;
    }
    (dhat::HeapStats::get().total_blocks - before) as f64 / REQUESTS as f64
}

async fn tower_row<S>(name: &str, addr: SocketAddr, header: Option<HeaderValue>, service: S)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut counts = [0.0; 2];
    for (post, count) in [false, true].into_iter().zip(&mut counts) {
        *count = per_request(|| {
            let (service, header) = (service.clone(), header.clone());
            async move {
                drop(
                    service
                        .oneshot(request(addr, post, header.as_ref()))
                        .await
                        .unwrap(),
                );
            }
        })
        .await;
    }
    println!("{name:<44} {:>8.1} {:>8.1}", counts[0], counts[1]);
}

async fn reqwest_row(
    name: &str,
    addr: SocketAddr,
    header: Option<HeaderValue>,
    client: ClientWithMiddleware,
) {
    let mut counts = [0.0; 2];
    for (post, count) in [false, true].into_iter().zip(&mut counts) {
        *count = per_request(|| {
            let (client, header) = (client.clone(), header.clone());
            async move {
                let url = format!("http://{addr}/v1/payments");
                let mut builder = if post {
                    client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(BODY)
                } else {
                    client.get(url)
                };
                if let Some(header) = header {
                    builder = builder.header(AUTHORIZATION, header);
                }
                drop(builder.send().await.unwrap());
            }
        })
        .await;
    }
    println!("{name:<44} {:>8.1} {:>8.1}", counts[0], counts[1]);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    support::runtime(None).block_on(async {
        let addr = support::server().await;
        let cache = support::cache();
        let header = cache
            .get()
            .await
            .unwrap()
            .headers()
            .next()
            .unwrap()
            .1
            .clone();
        let scope = Scope::origin(&format!("http://{addr}")).unwrap();
        let bare: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let teeing: Client<HttpConnector, RequestBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build_http();
        let layer = TokenLayer::new(cache.clone(), scope.clone());

        println!("allocations per request                          GET     POST");
        tower_row(
            "hyper-util, header set by hand",
            addr,
            Some(header.clone()),
            bare.clone(),
        )
        .await;
        let layered = tower::Layer::layer(&layer, teeing);
        tower_row(
            "hyper-util + TokenLayer (bodies copied aside)",
            addr,
            None,
            layered,
        )
        .await;
        let dpop = support::dpop_cache(tokenwarden_gateways::jose::Algorithm::Es256);
        let dpop_layer = TokenLayer::new(dpop.clone(), scope.clone());
        let teeing_dpop: Client<HttpConnector, RequestBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build_http();
        tower_row(
            "hyper-util + TokenLayer, DPoP ES256",
            addr,
            None,
            tower::Layer::layer(&dpop_layer, teeing_dpop),
        )
        .await;
        let cloning = tower::Layer::layer(&layer.clone().cloning_bodies(), bare);
        tower_row(
            "hyper-util + TokenLayer (cloning_bodies)",
            addr,
            None,
            cloning,
        )
        .await;

        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let by_hand = ClientBuilder::new(http.clone()).build();
        reqwest_row(
            "reqwest, header set by hand",
            addr,
            Some(header.clone()),
            by_hand,
        )
        .await;
        let noop = ClientBuilder::new(http.clone()).with(Noop).build();
        reqwest_row(
            "reqwest + a middleware that does nothing",
            addr,
            Some(header.clone()),
            noop,
        )
        .await;
        let middleware = ClientBuilder::new(http.clone())
            .with(TokenMiddleware::new(cache, scope.clone()))
            .build();
        reqwest_row("reqwest + TokenMiddleware", addr, None, middleware).await;
        let middleware = ClientBuilder::new(http)
            .with(TokenMiddleware::new(dpop, scope))
            .build();
        reqwest_row(
            "reqwest + TokenMiddleware, DPoP ES256",
            addr,
            None,
            middleware,
        )
        .await;
    });
}
