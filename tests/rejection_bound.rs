//! One route that always answers 401, beside routes that accept the token: the issuer calls
//! it costs stay within a handful per key, through both layers, while the good routes see no
//! error and a revocation of the token everywhere is still absorbed by one refresh.
//!
//! Time is the cache's manual clock: each tick moves it 100 ms, with 30 requests a tick (300 a
//! second, half of them to the bad route) for 10 s of the cache's time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::ClientWithMiddleware;
use tokenwarden::core::{Clock, ManualClock};
use tokenwarden::{
    KeyedCache, MemoryStore, Presentation, Replay, Scope, SharedTokens, TokenCache, TokenKey,
};
use tokenwarden_redis::{EncryptionKey, RedisStore};
use tokenwarden_reqwest::{TokenMiddleware, client_builder};
use tokenwarden_test_support::{Answer, CountingIssuer, LoopbackApi, Received, RedisServer};
use tokenwarden_tower::{RequestBody, TokenLayer, TokenService};
use tower::{BoxError, Layer as _, ServiceExt};

#[derive(Clone, Copy, Debug)]
enum Layer {
    Tower,
    Reqwest,
}

type Body = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Clone)]
enum Client {
    Tower(Box<TokenService<HyperClient<HttpConnector, RequestBody<Body>>>>),
    Reqwest(ClientWithMiddleware),
}

impl Client {
    fn new(layer: Layer, cache: TokenCache, scope: Scope) -> Self {
        let tower = TokenLayer::new(cache.clone(), scope.clone());
        Self::over(layer, tower, TokenMiddleware::new(cache, scope))
    }

    fn keyed(layer: Layer, keys: KeyedCache<String>, scope: Scope) -> Self {
        let tower = TokenLayer::keyed(keys.clone(), scope.clone());
        Self::over(layer, tower, TokenMiddleware::keyed(keys, scope))
    }

    /// The layer's HTTP client with `tower` or `middleware` on it, as `layer` says.
    fn over(layer: Layer, tower: TokenLayer, middleware: TokenMiddleware) -> Self {
        match layer {
            Layer::Tower => {
                let http = HyperClient::builder(TokioExecutor::new()).build_http();
                Client::Tower(Box::new(tower.layer(http)))
            }
            Layer::Reqwest => {
                let http = client_builder().no_proxy().build().unwrap();
                Client::Reqwest(
                    reqwest_middleware::ClientBuilder::new(http)
                        .with(middleware)
                        .build(),
                )
            }
        }
    }

    /// Sends a GET to `url` (for `key`, if given): its status and replay marker.
    async fn get(&self, url: &str, key: Option<&str>) -> (StatusCode, Option<Replay>) {
        match self {
            Client::Tower(service) => {
                let body = Empty::new().map_err(Into::into).boxed_unsync();
                let mut request = Request::get(url).body(body).unwrap();
                if let Some(key) = key {
                    request.extensions_mut().insert(TokenKey(key.to_owned()));
                }
                let response = (**service).clone().oneshot(request).await.unwrap();
                let replay = response.extensions().get::<Replay>().cloned();
                let status = response.status();
                let _ = response.into_body().collect().await;
                (status, replay)
            }
            Client::Reqwest(client) => {
                let mut request = client.get(url);
                if let Some(key) = key {
                    request = request.with_extension(TokenKey(key.to_owned()));
                }
                let response = request.send().await.unwrap();
                let replay = response.extensions().get::<Replay>().cloned();
                let status = response.status();
                let _ = response.bytes().await;
                (status, replay)
            }
        }
    }
}

/// The token number a request carried (`tok-N`), 0 for none.
fn token_number(request: &Received) -> usize {
    request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer tok-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// An API where `/bad` always answers 401 and every other route accepts any token numbered
/// above `revoked` (set it to revoke every token issued so far).
async fn api(revoked: Arc<AtomicUsize>) -> LoopbackApi {
    LoopbackApi::start(move |request| {
        let n = token_number(request);
        if request.path == "/bad" || n <= revoked.load(SeqCst) {
            Answer::new(401, "")
        } else {
            Answer::new(200, "ok")
        }
    })
    .await
}

#[derive(Debug, Default)]
struct Seen {
    good_failures: usize,
    /// Good requests that were rejected and replayed: the bad route's only way to slow them.
    good_replayed: usize,
    /// The good route's 99th percentile, wall time on loopback (printed, not asserted).
    good_p99: Duration,
    bad_401: usize,
    bad_held_off: usize,
}

/// Drives `clients` (one per replica, each with its own manual clock hand) for 100 ticks of
/// 100 ms: 15 requests to `/bad` and 15 to `/good` a tick, spread over the replicas; at tick
/// 55 every token issued so far is revoked.
async fn drive(
    clients: &[(Client, ManualClock)],
    api: &LoopbackApi,
    issuer: &CountingIssuer,
    revoked: &AtomicUsize,
    keys: &[&str],
) -> Seen {
    let mut seen = Seen::default();
    let mut good_times = Vec::new();
    for tick in 0..100 {
        if tick == 55 {
            revoked.store(issuer.calls(), SeqCst);
        }
        let mut calls = Vec::new();
        for i in 0..30 {
            let (client, _) = &clients[i % clients.len()];
            let client = client.clone();
            let path = if i % 2 == 0 { "/bad" } else { "/good" };
            let url = api.url(path);
            let key = (!keys.is_empty()).then(|| keys[i % keys.len()].to_owned());
            calls.push(async move {
                let started = Instant::now();
                let answer = client.get(&url, key.as_deref()).await;
                (path, answer, started.elapsed())
            });
        }
        for (path, (status, replay), took) in futures_util::future::join_all(calls).await {
            match path {
                "/good" => {
                    good_times.push(took);
                    seen.good_failures += usize::from(status != StatusCode::OK);
                    seen.good_replayed +=
                        usize::from(matches!(replay, Some(Replay::Replayed { .. })));
                }
                "/bad" => {
                    seen.bad_401 += usize::from(status == StatusCode::UNAUTHORIZED);
                    seen.bad_held_off +=
                        usize::from(matches!(replay, Some(Replay::NotReplayed(_))));
                }
                _ => {}
            }
        }
        for (_, hand) in clients {
            hand.advance(Duration::from_millis(100));
        }
    }
    good_times.sort_unstable();
    seen.good_p99 = good_times[good_times.len() * 99 / 100];
    seen
}

fn cache(issuer: &CountingIssuer, clock: Clock) -> tokenwarden::TokenCacheBuilder {
    TokenCache::builder(issuer.source())
        .with_clock(clock)
        .with_presentation(Presentation::bearer())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_always_answers_401_costs_a_handful_of_issuer_calls_through_either_layer() {
    for layer in [Layer::Tower, Layer::Reqwest] {
        let revoked = Arc::new(AtomicUsize::new(0));
        let api = api(Arc::clone(&revoked)).await;
        let issuer = CountingIssuer::up().with_lifetime(Duration::from_secs(20));
        let (clock, hand) = Clock::manual();
        let cache = cache(&issuer, clock).build().unwrap();
        let scope = Scope::origin(&api.origin()).unwrap();
        let client = Client::new(layer, cache.clone(), scope);
        let seen = drive(&[(client, hand)], &api, &issuer, &revoked, &[]).await;
        let calls = issuer.calls();
        println!(
            "{layer:?}: {calls} issuer calls for 1,500 requests to /bad and 1,500 to /good over \
             10 s, a revocation at 5.5 s; {seen:?}; status {:?}",
            cache.status()
        );
        assert_eq!(
            seen.good_failures, 0,
            "{layer:?}: the good route saw no error"
        );
        assert_eq!(
            seen.bad_401, 1500,
            "{layer:?}: every /bad request got its 401"
        );
        // The first token; the bad route's: one replacement when it first rejects, one when
        // it is tried again 5 s later; the revocation's: one, or two when it also catches the
        // token being fetched.
        assert!(calls <= 1 + 2 + 2, "{layer:?}: {calls} issuer calls");
        assert!(cache.status().held_off_rejections > 1000, "{layer:?}");
        assert!(seen.bad_held_off > 1000, "{layer:?}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_always_answers_401_costs_a_handful_of_issuer_calls_per_key() {
    for layer in [Layer::Tower, Layer::Reqwest] {
        let revoked = Arc::new(AtomicUsize::new(0));
        let api = api(Arc::clone(&revoked)).await;
        let issuer = CountingIssuer::up().with_lifetime(Duration::from_secs(20));
        let (clock, hand) = Clock::manual();
        let factory_issuer = issuer.clone();
        let keys = KeyedCache::<String>::builder()
            .with_factory(move |_: &String| Ok(cache(&factory_issuer, clock.clone())))
            .build();
        let scope = Scope::origin(&api.origin()).unwrap();
        let client = Client::keyed(layer, keys.clone(), scope);
        let seen = drive(&[(client, hand)], &api, &issuer, &revoked, &["m-1"]).await;
        let calls = issuer.calls();
        println!("{layer:?}, one merchant of a keyed cache: {calls} issuer calls; {seen:?}");
        assert_eq!(seen.good_failures, 0, "{layer:?}");
        assert!(calls <= 1 + 2 + 2, "{layer:?}: {calls} issuer calls");
    }
}

/// Four replicas, each a cache of its own sharing through `store`, for either layer.
async fn four_replicas(name: &str, store: impl Fn() -> SharedTokens) {
    for layer in [Layer::Tower, Layer::Reqwest] {
        let revoked = Arc::new(AtomicUsize::new(0));
        let api = api(Arc::clone(&revoked)).await;
        let issuer = CountingIssuer::up().with_lifetime(Duration::from_secs(20));
        let scope = Scope::origin(&api.origin()).unwrap();
        let replicas: Vec<_> = (0..4)
            .map(|_| {
                let (clock, hand) = Clock::manual();
                let cache = cache(&issuer, clock)
                    .with_shared(&store(), "api")
                    .build()
                    .unwrap();
                (Client::new(layer, cache, scope.clone()), hand)
            })
            .collect();
        let seen = drive(&replicas, &api, &issuer, &revoked, &[]).await;
        let calls = issuer.calls();
        println!("{layer:?}, 4 replicas on one {name}: {calls} issuer calls; {seen:?}");
        assert_eq!(seen.good_failures, 0, "{layer:?}");
        // Each replica learns the route on its own (a replacement each at most, shared), and
        // one or two shared tokens after the revocation.
        assert!(
            calls <= 1 + 4 + 2,
            "{layer:?}: {calls} issuer calls fleet-wide"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_one_memory_store_call_the_issuer_a_handful_of_times_fleet_wide() {
    let store = MemoryStore::new();
    four_replicas("MemoryStore", || SharedTokens::new(store.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_one_redis_call_the_issuer_a_handful_of_times_fleet_wide() {
    let redis = RedisServer::start();
    let url = redis.url();
    four_replicas("Redis", || {
        let store = RedisStore::open(&url, EncryptionKey::new([7; 32])).unwrap();
        SharedTokens::new(store)
    })
    .await;
}

/// One route only, one request every 100 ms: a revocation that also covers the next token
/// issued (it spreads while a replacement is fetched), then a plain revocation much later.
/// The first costs the replay's 401 and one or two more while the fresh-token backoff
/// (125-250 ms) runs; the second costs none; never a route remembered as bad and callers
/// locked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_on_the_only_route_are_absorbed_even_when_a_replay_is_rejected() {
    for layer in [Layer::Tower, Layer::Reqwest] {
        let revoked = Arc::new(AtomicUsize::new(0));
        let api = api(Arc::clone(&revoked)).await;
        let issuer = CountingIssuer::up().with_lifetime(Duration::from_secs(3600));
        let (clock, hand) = Clock::manual();
        let cache = cache(&issuer, clock).build().unwrap();
        let client = Client::new(layer, cache, Scope::origin(&api.origin()).unwrap());
        let url = api.url("/charges");
        let mut failures = [0usize; 2];
        for tick in 0..400 {
            if tick == 10 {
                // This token and the next one.
                revoked.store(issuer.calls() + 1, SeqCst);
            }
            if tick == 300 {
                revoked.store(issuer.calls(), SeqCst);
            }
            let (status, _) = client.get(&url, None).await;
            if status != StatusCode::OK {
                failures[usize::from(tick >= 300)] += 1;
            }
            hand.advance(Duration::from_millis(100));
        }
        let calls = issuer.calls();
        println!(
            "{layer:?}: failed after the first revocation {}, after the second {}; {calls} issuer calls",
            failures[0], failures[1]
        );
        assert!(
            failures[0] <= 3 && failures[1] == 0,
            "{layer:?}: {failures:?}"
        );
    }
}

/// A bad route per request (`/orders/{id}`, each id once), 10 a second for 10 minutes of the
/// cache's time, beside a good route: the rate bound backs off while replacements keep not
/// helping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_bad_paths_cost_a_bounded_number_of_issuer_calls() {
    let revoked = Arc::new(AtomicUsize::new(0));
    let api = LoopbackApi::start(|request| {
        if request.path.starts_with("/orders/") {
            Answer::new(401, "")
        } else {
            Answer::new(200, "ok")
        }
    })
    .await;
    drop(revoked);
    let issuer = CountingIssuer::up().with_lifetime(Duration::from_secs(7200));
    let (clock, hand) = Clock::manual();
    let cache = cache(&issuer, clock).build().unwrap();
    let client = Client::new(Layer::Reqwest, cache, Scope::origin(&api.origin()).unwrap());
    for i in 0..6000 {
        if i % 10 == 0 {
            let (status, _) = client.get(&api.url("/good"), None).await;
            assert_eq!(status, StatusCode::OK);
        }
        client.get(&api.url(&format!("/orders/{i}")), None).await;
        hand.advance(Duration::from_millis(100));
    }
    let calls = issuer.calls();
    println!("10 minutes of distinct bad paths: {calls} issuer calls");
    assert!(calls <= 15, "{calls} issuer calls");
}
