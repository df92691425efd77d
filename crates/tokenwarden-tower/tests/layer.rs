//! The tower layer against a real hyper server on loopback, through hyper-util's client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden_core::{FetchError, Presentation, Token, TokenCache};
use tokenwarden_origin::{InsecureTransport, Scope};
use tokenwarden_test_support::{
    Answer, ClockHold, CountingIssuer, LoopbackApi, Received, every_kind_of_header,
};
use tokenwarden_tower::{Classifier, LayerPolicy, NotReplayed, Replay, SkipToken, Verdict};
use tokenwarden_tower::{RequestBody, TokenLayer};
use tokio::time::Instant;
use tower::{BoxError, Layer as _, Service, ServiceBuilder, ServiceExt};

/// A loopback API and the issuer of the tokens it accepts.
struct Sandbox {
    api: LoopbackApi,
    tokens: Arc<Tokens>,
}

/// Which tokens the API accepts: those the issuer minted, until `expire_all`.
struct Tokens {
    /// Mints `tok-N`, each valid for 600 s.
    issuer: CountingIssuer,
    /// Every token up to `tok-N` has expired.
    expired_through: AtomicUsize,
    /// Requests served per token on `/limited`, which ends a token after 70.
    limited: Mutex<HashMap<String, usize>>,
}

impl Sandbox {
    async fn start() -> Self {
        let tokens = Arc::new(Tokens {
            issuer: CountingIssuer::up().with_lifetime(Duration::from_secs(600)),
            expired_through: AtomicUsize::new(0),
            limited: Mutex::default(),
        });
        let (route, early) = (Arc::clone(&tokens), Arc::clone(&tokens));
        let api = LoopbackApi::start_answering_early(
            move |seen| route.answer(seen),
            move |seen| early.answer_early(seen),
        )
        .await;
        Self { api, tokens }
    }

    /// A token source minting `tok-N`, each valid until the test says otherwise.
    fn source(&self) -> impl tokenwarden_core::TokenSource {
        self.tokens.issuer.source()
    }

    fn fetches(&self) -> usize {
        self.tokens.issuer.calls()
    }

    fn expire_all(&self) {
        let minted = self.tokens.issuer.calls();
        self.tokens.expired_through.store(minted, SeqCst);
    }

    fn seen(&self, path: &str) -> Vec<Received> {
        let received = self.api.received().into_iter();
        received.filter(|seen| seen.path == path).collect()
    }

    fn scope(&self) -> Scope {
        Scope::origin(&self.api.origin()).unwrap()
    }

    /// A token layer with `cache`, scoped to the API's origin.
    fn token_layer(&self, cache: &TokenCache) -> TokenLayer {
        TokenLayer::new(cache.clone(), self.scope())
    }

    /// The layer with a policy of its own, made from the sandbox's scope.
    fn token_layer_with(
        &self,
        cache: &TokenCache,
        policy: impl FnOnce(LayerPolicy) -> LayerPolicy,
    ) -> TokenLayer {
        TokenLayer::new(cache.clone(), policy(LayerPolicy::new(self.scope())))
    }

    fn post(&self, path: &str, body: &'static str) -> Request<Body> {
        Request::post(self.api.url(path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    fn get(&self, path: &str) -> Request<Body> {
        Request::get(self.api.url(path))
            .body(Full::default())
            .unwrap()
    }
}

impl Tokens {
    fn authorized(&self, seen: &Received) -> bool {
        let token = seen.header("authorization");
        let token = token.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let minted = token.strip_prefix("tok-").and_then(|n| n.parse().ok());
        let current = |n: usize| n > self.expired_through.load(SeqCst) && n <= self.issuer.calls();
        let used = self.limited.lock().unwrap().get(token).copied();
        minted.is_some_and(current) && used.is_none_or(|used| used <= 70)
    }

    /// `/early` answers before reading the body.
    fn answer_early(&self, seen: &Received) -> Option<Answer> {
        (seen.path == "/early" && !self.authorized(seen)).then(|| Answer::new(401, ""))
    }

    fn answer(&self, seen: &Received) -> Answer {
        let authorized = self.authorized(seen);
        let challenge =
            |challenge, body| Answer::new(401, body).with_header("www-authenticate", challenge);
        if seen.path == "/limited" && authorized {
            let token = seen.header("authorization").unwrap()["Bearer ".len()..].to_owned();
            let mut limited = self.limited.lock().unwrap();
            let used = limited.entry(token).or_default();
            *used += 1;
            if *used > 70 {
                return challenge(r#"Bearer error="invalid_token""#, "");
            }
            return Answer::new(200, "ok");
        }
        match seen.path.as_str() {
            "/scope" => challenge(r#"Bearer realm="api", error="insufficient_scope""#, ""),
            "/always-401" => challenge(r#"Bearer error="invalid_token""#, ""),
            "/says-expired" if !authorized => Answer::new(400, r#"{"error":"session expired"}"#),
            _ if !authorized => challenge(
                r#"Bearer realm="api", error="invalid_token""#,
                "token rejected",
            ),
            _ => Answer::new(200, "ok"),
        }
    }
}

type Body = Full<Bytes>;

fn client<B>() -> Client<HttpConnector, RequestBody<B>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn headers_of_every_kind_are_injected_from_one_token() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::builder(sandbox.source())
        .with_presentation(every_kind_of_header())
        .build()
        .unwrap();
    let svc = sandbox.token_layer(&cache).layer(client());
    let response = svc.oneshot(sandbox.get("/echo")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = &sandbox.seen("/echo")[0];
    assert_eq!(seen.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen.header("token"), Some("tok-1"));
    assert_eq!(seen.header("merchant-account"), Some("FNS-12345"));
    assert!(response.extensions().get::<Replay>().is_none());
}

#[tokio::test]
async fn a_401_refreshes_once_and_replays_the_identical_post() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let mut svc = sandbox.token_layer(&cache).layer(client());
    let warm = svc
        .ready()
        .await
        .unwrap()
        .call(sandbox.get("/warm"))
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    sandbox.expire_all();

    const BODY: &str = r#"{"amount":1999,"currency":"EUR","reference":"order-42"}"#;
    let mut request = sandbox.post("/pay", BODY);
    request.extensions_mut().insert("caller extension");
    *request.version_mut() = http::Version::HTTP_11;
    let response = svc.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );

    let seen = sandbox.seen("/pay");
    assert_eq!(seen.len(), 2, "sent, rejected, replayed");
    assert_eq!(seen[0].body, BODY);
    assert_eq!(seen[1].body, BODY);
    assert_eq!(seen[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen[1].header("authorization"), Some("Bearer tok-2"));
    for name in ["content-type", "content-length"] {
        let sent = seen[0].header(name).expect(name);
        assert_eq!(seen[1].header(name), Some(sent), "{name}");
    }
    assert_eq!(sandbox.fetches(), 2);
}

// Time stands still throughout: every rejection after the first falls inside the backoff window
// that the first opened (125–250 ms), however slow the machine, so the counts are exact.
#[tokio::test(start_paused = true)]
async fn a_rejected_replay_reaches_the_caller_without_a_loop() {
    let _clock = ClockHold::start();
    let start = Instant::now();
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox.token_layer(&cache).layer(client());
    let response = svc
        .clone()
        .oneshot(sandbox.post("/always-401", "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    assert_eq!(sandbox.seen("/always-401").len(), 2);
    assert_eq!(sandbox.fetches(), 2);

    // An API that rejects every fresh token: 50 more requests, no more fetches, and each
    // caller gets the API's 401.
    for _ in 0..50 {
        let r = svc
            .clone()
            .oneshot(sandbox.post("/always-401", "{}"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.extensions().get::<Replay>(),
            Some(&Replay::NotReplayed(NotReplayed::StillRejected))
        );
    }
    assert_eq!(sandbox.fetches(), 2, "fetches for 51 requests");
    assert_eq!(sandbox.seen("/always-401").len(), 52);
    // the replay's rejection and the 50 others
    assert_eq!(cache.stats().suppressed_invalidations, 51);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn an_api_ending_tokens_that_worked_is_ordinary_expiry_not_a_broken_api() {
    // Each token is accepted 70 times, then rejected: every rejection follows a success, so
    // every one is replaced at once and replayed; none is "still rejected".
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox.token_layer(&cache).layer(client());
    for i in 0..562 {
        let response = svc.clone().oneshot(sandbox.get("/limited")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
    assert_eq!(sandbox.fetches(), 9, "562 requests at 70 per token");
    let stats = cache.stats();
    assert_eq!(stats.suppressed_invalidations, 0);
    assert_eq!(stats.invalidations, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_500_rejections_of_one_token_fetches_once() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox.token_layer(&cache).layer(client());
    let warm = svc.clone().oneshot(sandbox.get("/warm")).await.unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    sandbox.expire_all();

    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let svc = svc.clone();
            let body: &'static str = Box::leak(format!(r#"{{"n":{i}}}"#).into_boxed_str());
            let request = sandbox.post("/storm", body);
            tokio::spawn(async move { svc.oneshot(request).await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(sandbox.fetches(), 2, "one fetch for the whole storm");
    let stats = cache.stats();
    assert_eq!(stats.invalidations, 1);
    let rejected = sandbox.seen("/storm").len() - 500;
    assert_eq!(stats.coalesced_invalidations as usize, rejected - 1);
}

#[tokio::test]
async fn a_streaming_body_over_the_cap_is_sent_once_and_the_next_request_succeeds() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox
        .token_layer_with(&cache, |p| p.with_max_replay_body(1024))
        .layer(client());
    svc.clone().oneshot(sandbox.get("/warm")).await.unwrap();
    sandbox.expire_all();

    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..8)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 512]))))
        .collect();
    let stream = StreamBody::new(futures_util::stream::iter(chunks));
    let request = Request::post(sandbox.api.url("/upload"))
        .body(stream)
        .unwrap();
    let streaming = sandbox
        .token_layer_with(&cache, |p| p.with_max_replay_body(1024))
        .layer(client());
    let response = streaming.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<Replay>(),
        Some(&Replay::NotReplayed(NotReplayed::BodyTooLarge))
    );
    let uploads = sandbox.seen("/upload");
    assert_eq!(uploads.len(), 1, "sent once");
    assert_eq!(uploads[0].body.len(), 4096, "sent whole");

    // The rejection invalidated the token: the next request gets a fresh one.
    let next = svc.oneshot(sandbox.post("/pay", "{}")).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert!(next.extensions().get::<Replay>().is_none());
    assert_eq!(sandbox.fetches(), 2);
}

#[tokio::test]
async fn a_body_the_server_answered_before_reading_is_not_replayed() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox.token_layer(&cache).layer(client());
    svc.clone().oneshot(sandbox.get("/warm")).await.unwrap();
    sandbox.expire_all();
    // A stream of unknown length that is still sending when the server answers.
    let first: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(Bytes::from_static(b"{")))];
    let stream =
        StreamBody::new(futures_util::stream::iter(first).chain(futures_util::stream::pending()));
    let streaming = sandbox.token_layer(&cache).layer(client());
    let request = Request::post(sandbox.api.url("/early"))
        .body(stream)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), streaming.oneshot(request))
        .await
        .expect("the early answer is returned")
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<Replay>(),
        Some(&Replay::NotReplayed(NotReplayed::BodyNotReplayable))
    );
    assert_eq!(cache.stats().invalidations, 1);
    let next = svc.oneshot(sandbox.get("/after")).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(sandbox.fetches(), 2);
}

#[tokio::test]
async fn insufficient_scope_is_not_a_reason_to_refresh() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox.token_layer(&cache).layer(client());
    let response = svc.oneshot(sandbox.get("/scope")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<Replay>().is_none());
    assert_eq!(sandbox.seen("/scope").len(), 1);
    assert_eq!(sandbox.fetches(), 1);
    assert_eq!(cache.stats().invalidations, 0);
}

#[tokio::test]
async fn a_header_the_caller_set_is_kept() {
    let sandbox = Sandbox::start().await;
    let presentation = Presentation::bearer().with_fixed_header(
        HeaderName::from_static("merchant-account"),
        HeaderValue::from_static("default"),
    );
    let cache = TokenCache::builder(sandbox.source())
        .with_presentation(presentation)
        .build()
        .unwrap();
    let svc = sandbox.token_layer(&cache).layer(client());
    let mut request = sandbox.get("/echo");
    request
        .headers_mut()
        .insert("merchant-account", HeaderValue::from_static("caller"));
    svc.clone().oneshot(request).await.unwrap();
    let mut own_token = sandbox.get("/echo");
    own_token
        .headers_mut()
        .insert("authorization", HeaderValue::from_static("Bearer mine"));
    let response = svc.oneshot(own_token).await.unwrap();
    // the caller's own token was rejected: not ours to invalidate or replay
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<Replay>().is_none());
    let seen = sandbox.seen("/echo");
    assert_eq!(seen[0].header("merchant-account"), Some("caller"));
    assert_eq!(seen[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen[1].header("authorization"), Some("Bearer mine"));
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn the_opt_out_extension_sends_no_token() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox.token_layer(&cache).layer(client());
    let mut request = sandbox.get("/public");
    request.extensions_mut().insert(SkipToken);
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(sandbox.seen("/public")[0].header("authorization").is_none());
    assert_eq!(sandbox.fetches(), 0);
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_unless_allowed() {
    let cache = TokenCache::new(|| async { Ok::<_, FetchError>(Token::new("t")) });
    let remote_scope = || Scope::origin("http://api.example.com").unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let inner = tower::service_fn(move |request: Request<RequestBody<Body>>| {
        let counter = Arc::clone(&counter);
        async move {
            assert_eq!(request.headers()["authorization"], "Bearer t");
            counter.fetch_add(1, SeqCst);
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }
    });
    let refused = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), remote_scope()))
        .service(inner.clone());
    let remote = || {
        Request::get("http://api.example.com/v1")
            .body(Body::default())
            .unwrap()
    };
    let err = refused.oneshot(remote()).await.unwrap_err();
    let err = err
        .downcast::<InsecureTransport>()
        .expect("InsecureTransport");
    assert_eq!(err.host, "api.example.com");
    assert_eq!(seen.load(SeqCst), 0, "nothing was sent");

    let allowed = ServiceBuilder::new()
        .layer(TokenLayer::new(
            cache.clone(),
            LayerPolicy::new(remote_scope()).with_insecure_http(true),
        ))
        .service(inner.clone());
    assert!(allowed.oneshot(remote()).await.is_ok());
    let https = ServiceBuilder::new()
        .layer(TokenLayer::new(
            cache,
            Scope::origin("https://api.example.com").unwrap(),
        ))
        .service(inner);
    let secure = Request::get("https://api.example.com/v1")
        .body(Body::default())
        .unwrap();
    assert!(https.oneshot(secure).await.is_ok());
    assert_eq!(seen.load(SeqCst), 2);
}

#[tokio::test]
async fn only_the_configured_origin_gets_tokens() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox.token_layer(&cache).layer(client());
    svc.clone().oneshot(sandbox.get("/echo")).await.unwrap();
    // The same server under another host name: another origin.
    let other = sandbox.api.url("/echo").replace("127.0.0.1", "localhost");
    svc.oneshot(Request::get(other).body(Body::default()).unwrap())
        .await
        .unwrap();
    let seen = sandbox.seen("/echo");
    assert!(seen[0].header("authorization").is_some());
    assert!(
        seen[1].header("authorization").is_none(),
        "another origin got the token"
    );
}

#[tokio::test]
async fn the_replay_drives_the_inner_service_to_ready() {
    // ConcurrencyLimit panics when called without a permit from poll_ready.
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(sandbox.token_layer(&cache))
        .concurrency_limit(1)
        .service(client());
    svc.clone().oneshot(sandbox.get("/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc.oneshot(sandbox.post("/pay", "{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sandbox.seen("/pay").len(), 2);
}

#[tokio::test]
async fn a_custom_classifier_can_read_the_body() {
    struct SaysExpired;
    impl Classifier for SaysExpired {
        fn classify(&self, status: StatusCode, _: &HeaderMap) -> Verdict {
            match status {
                StatusCode::BAD_REQUEST => Verdict::InspectBody,
                _ => Verdict::Accepted,
            }
        }
        fn classify_body(&self, _: StatusCode, _: &HeaderMap, body: &[u8]) -> bool {
            body.windows(7).any(|w| w == b"expired")
        }
    }
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = sandbox
        .token_layer_with(&cache, |p| p.with_classifier(SaysExpired))
        .layer(client());
    svc.clone().oneshot(sandbox.get("/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc
        .clone()
        .oneshot(sandbox.post("/says-expired", "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sandbox.seen("/says-expired").len(), 2);
    // A 400 that is not about the token reaches the caller whole, body included.
    sandbox.expire_all();
    let response = svc
        .oneshot(
            Request::builder()
                .method(Method::POST)
                .uri(sandbox.api.url("/scope"))
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_inspected_body_that_is_not_a_rejection_reaches_the_caller_whole() {
    struct LooksAtEverything;
    impl Classifier for LooksAtEverything {
        fn classify(&self, _: StatusCode, _: &HeaderMap) -> Verdict {
            Verdict::InspectBody
        }
    }
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let layer = sandbox.token_layer_with(&cache, |p| {
        p.with_classifier(LooksAtEverything)
            .with_max_inspect_body(2)
    });
    let svc = layer.layer(client());
    svc.clone().oneshot(sandbox.get("/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc.oneshot(sandbox.get("/x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "token rejected");
}

pin_project_lite::pin_project! {
    /// A response body that is not `Unpin` (as a decompression layer's body may be).
    struct PinnedBody {
        inner: Full<Bytes>,
        #[pin]
        _pinned: std::marker::PhantomPinned,
    }
}

impl http_body::Body for PinnedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(self.project().inner).poll_frame(cx)
    }
}

#[tokio::test]
async fn a_service_that_is_not_send_with_a_body_that_is_not_unpin_is_served_and_replayed() {
    // `Rc`: neither the service nor its future is `Send`; the body is `!Unpin`.
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = std::rc::Rc::clone(&calls);
    let inner = tower::service_fn(move |request: Request<RequestBody<Full<Bytes>>>| {
        let counted = std::rc::Rc::clone(&counted);
        async move {
            counted.set(counted.get() + 1);
            let body = request.into_body().collect().await?.to_bytes();
            let ok = counted.get() > 1;
            let mut response = Response::new(PinnedBody {
                inner: Full::new(body),
                _pinned: std::marker::PhantomPinned,
            });
            if !ok {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, BoxError>(response)
        }
    });
    let issuer = CountingIssuer::up().without_expiry();
    let cache = TokenCache::new(issuer.source());
    let scope = Scope::origin("https://api.example.com").unwrap();
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, scope))
        .service(inner);
    let request = Request::post("https://api.example.com/pay")
        .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "{\"amount\":1}"
    );
    assert_eq!(calls.get(), 2);
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn with_cloned_bodies_the_client_keeps_its_own_body_type() {
    let sandbox = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    // hyper-util's client for `Full<Bytes>`, as it was before the layer.
    let plain: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let svc = sandbox.token_layer(&cache).cloning_bodies().layer(plain);
    svc.clone().oneshot(sandbox.get("/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc
        .oneshot(sandbox.post("/pay", "{\"n\":1}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    let seen = sandbox.seen("/pay");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(seen[1].body, "{\"n\":1}");
}
