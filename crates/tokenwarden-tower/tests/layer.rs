//! The tower layer against a real hyper server on loopback, through hyper-util's client.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenwarden_core::{FetchError, InsecureTransport, Presentation, Scope, Token, TokenCache};
use tokenwarden_test_support::ClockHold;
use tokenwarden_tower::{Classifier, NotReplayed, Replay, SkipToken, Verdict};
use tokenwarden_tower::{RequestBody, TokenLayer};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// What the server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A loopback API and token issuer sharing one set of valid tokens.
#[derive(Default)]
struct Sandbox {
    valid: Mutex<HashSet<String>>,
    seen: Mutex<Vec<Seen>>,
    minted: AtomicUsize,
    /// Requests served per token on `/limited`, which ends a token after 70.
    uses: Mutex<std::collections::HashMap<String, usize>>,
}

impl Sandbox {
    async fn start() -> (Arc<Self>, SocketAddr) {
        let sandbox = Arc::new(Sandbox::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::clone(&sandbox);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.handle(r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (sandbox, addr)
    }

    /// A token source minting `tok-N`, each valid until the test says otherwise.
    fn source(self: &Arc<Self>) -> impl tokenwarden_core::TokenSource {
        let state = Arc::clone(self);
        move || {
            let state = Arc::clone(&state);
            async move {
                let n = state.minted.fetch_add(1, SeqCst) + 1;
                let token = format!("tok-{n}");
                state.valid.lock().unwrap().insert(token.clone());
                Ok::<_, FetchError>(Token::new(token).with_expires_in(Duration::from_secs(600)))
            }
        }
    }

    fn fetches(&self) -> usize {
        self.minted.load(SeqCst)
    }

    fn expire_all(&self) {
        self.valid.lock().unwrap().clear();
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let authorized = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.valid.lock().unwrap().contains(t));
        let respond = |status: StatusCode, challenge: Option<&'static str>, body: &'static str| {
            let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.status_mut() = status;
            if let Some(c) = challenge {
                r.headers_mut()
                    .insert("www-authenticate", HeaderValue::from_static(c));
            }
            r
        };
        if path == "/limited" && authorized {
            let token =
                parts.headers["authorization"].to_str().unwrap()["Bearer ".len()..].to_owned();
            let mut uses = self.uses.lock().unwrap();
            let used = uses.entry(token.clone()).or_default();
            *used += 1;
            if *used > 70 {
                self.valid.lock().unwrap().remove(&token);
                return respond(
                    StatusCode::UNAUTHORIZED,
                    Some(r#"Bearer error="invalid_token""#),
                    "",
                );
            }
            return respond(StatusCode::OK, None, "ok");
        }
        if path == "/early" && !authorized {
            // answers before reading the body
            return respond(StatusCode::UNAUTHORIZED, None, "");
        }
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers: parts.headers.clone(),
            body,
        });
        match path.as_str() {
            "/scope" => respond(
                StatusCode::UNAUTHORIZED,
                Some(r#"Bearer realm="api", error="insufficient_scope""#),
                "",
            ),
            "/always-401" => respond(
                StatusCode::UNAUTHORIZED,
                Some(r#"Bearer error="invalid_token""#),
                "",
            ),
            "/says-expired" if !authorized => respond(
                StatusCode::BAD_REQUEST,
                None,
                r#"{"error":"session expired"}"#,
            ),
            _ if !authorized => respond(
                StatusCode::UNAUTHORIZED,
                Some(r#"Bearer realm="api", error="invalid_token""#),
                "token rejected",
            ),
            _ => respond(StatusCode::OK, None, "ok"),
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

fn scope(addr: SocketAddr) -> Scope {
    Scope::origin(&format!("http://{addr}")).unwrap()
}

fn post(addr: SocketAddr, path: &str, body: &'static str) -> Request<Body> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Request<Body> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn headers_of_every_kind_are_injected_from_one_token() {
    let (sandbox, addr) = Sandbox::start().await;
    let presentation = Presentation::bearer()
        .with_header(HeaderName::from_static("token"))
        .with_fixed_header(
            HeaderName::from_static("merchant-account"),
            HeaderValue::from_static("FNS-12345"),
        );
    let cache = TokenCache::builder(sandbox.source())
        .with_presentation(presentation)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, scope(addr)))
        .service(client());
    let response = svc.oneshot(get(addr, "/echo")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = &sandbox.seen("/echo")[0];
    assert_eq!(seen.headers["authorization"], "Bearer tok-1");
    assert_eq!(seen.headers["token"], "tok-1");
    assert_eq!(seen.headers["merchant-account"], "FNS-12345");
    assert!(response.extensions().get::<Replay>().is_none());
}

#[tokio::test]
async fn a_401_refreshes_once_and_replays_the_identical_post() {
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let mut svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)))
        .service(client());
    let warm = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/warm"))
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    sandbox.expire_all();

    const BODY: &str = r#"{"amount":1999,"currency":"EUR","reference":"order-42"}"#;
    let mut request = post(addr, "/pay", BODY);
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
    assert_eq!(seen[0].headers["authorization"], "Bearer tok-1");
    assert_eq!(seen[1].headers["authorization"], "Bearer tok-2");
    for name in ["content-type", "content-length"] {
        assert_eq!(seen[0].headers[name], seen[1].headers[name]);
    }
    assert_eq!(sandbox.fetches(), 2);
}

// Time stands still throughout: every rejection after the first falls inside the backoff window
// that the first opened (125–250 ms), however slow the machine, so the counts are exact.
#[tokio::test(start_paused = true)]
async fn a_rejected_replay_reaches_the_caller_without_a_loop() {
    let _clock = ClockHold::start();
    let start = Instant::now();
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)))
        .service(client());
    let response = svc
        .clone()
        .oneshot(post(addr, "/always-401", "{}"))
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
            .oneshot(post(addr, "/always-401", "{}"))
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
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)))
        .service(client());
    for i in 0..562 {
        let response = svc.clone().oneshot(get(addr, "/limited")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
    assert_eq!(sandbox.fetches(), 9, "562 requests at 70 per token");
    let stats = cache.stats();
    assert_eq!(stats.suppressed_invalidations, 0);
    assert_eq!(stats.invalidations, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_500_rejections_of_one_token_fetches_once() {
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)))
        .service(client());
    let warm = svc.clone().oneshot(get(addr, "/warm")).await.unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    sandbox.expire_all();

    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let body: &'static str = Box::leak(format!(r#"{{"n":{i}}}"#).into_boxed_str());
                svc.oneshot(post(addr, "/storm", body))
                    .await
                    .unwrap()
                    .status()
            })
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
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)).with_max_replay_body(1024))
        .service(client());
    svc.clone().oneshot(get(addr, "/warm")).await.unwrap();
    sandbox.expire_all();

    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..8)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 512]))))
        .collect();
    let stream = StreamBody::new(futures_util::stream::iter(chunks));
    let request = Request::post(format!("http://{addr}/upload"))
        .body(stream)
        .unwrap();
    let streaming = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)).with_max_replay_body(1024))
        .service(client());
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
    let next = svc.oneshot(post(addr, "/pay", "{}")).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert!(next.extensions().get::<Replay>().is_none());
    assert_eq!(sandbox.fetches(), 2);
}

#[tokio::test]
async fn a_body_the_server_answered_before_reading_is_not_replayed() {
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)))
        .service(client());
    svc.clone().oneshot(get(addr, "/warm")).await.unwrap();
    sandbox.expire_all();
    // A stream of unknown length that is still sending when the server answers.
    let first: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(Bytes::from_static(b"{")))];
    let stream =
        StreamBody::new(futures_util::stream::iter(first).chain(futures_util::stream::pending()));
    let streaming = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)))
        .service(client());
    let request = Request::post(format!("http://{addr}/early"))
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
    let next = svc.oneshot(get(addr, "/after")).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(sandbox.fetches(), 2);
}

#[tokio::test]
async fn insufficient_scope_is_not_a_reason_to_refresh() {
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache.clone(), scope(addr)))
        .service(client());
    let response = svc.oneshot(get(addr, "/scope")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<Replay>().is_none());
    assert_eq!(sandbox.seen("/scope").len(), 1);
    assert_eq!(sandbox.fetches(), 1);
    assert_eq!(cache.stats().invalidations, 0);
}

#[tokio::test]
async fn a_header_the_caller_set_is_kept() {
    let (sandbox, addr) = Sandbox::start().await;
    let presentation = Presentation::bearer().with_fixed_header(
        HeaderName::from_static("merchant-account"),
        HeaderValue::from_static("default"),
    );
    let cache = TokenCache::builder(sandbox.source())
        .with_presentation(presentation)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, scope(addr)))
        .service(client());
    let mut request = get(addr, "/echo");
    request
        .headers_mut()
        .insert("merchant-account", HeaderValue::from_static("caller"));
    svc.clone().oneshot(request).await.unwrap();
    let mut own_token = get(addr, "/echo");
    own_token
        .headers_mut()
        .insert("authorization", HeaderValue::from_static("Bearer mine"));
    let response = svc.oneshot(own_token).await.unwrap();
    // the caller's own token was rejected: not ours to invalidate or replay
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<Replay>().is_none());
    let seen = sandbox.seen("/echo");
    assert_eq!(seen[0].headers["merchant-account"], "caller");
    assert_eq!(seen[0].headers["authorization"], "Bearer tok-1");
    assert_eq!(seen[1].headers["authorization"], "Bearer mine");
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn the_opt_out_extension_sends_no_token() {
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, scope(addr)))
        .service(client());
    let mut request = get(addr, "/public");
    request.extensions_mut().insert(SkipToken);
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        sandbox.seen("/public")[0]
            .headers
            .get("authorization")
            .is_none()
    );
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
        .layer(TokenLayer::new(cache.clone(), remote_scope()).with_insecure_http(true))
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
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let layer = TokenLayer::new(cache, scope(addr));
    let svc = ServiceBuilder::new().layer(layer).service(client());
    svc.clone().oneshot(get(addr, "/echo")).await.unwrap();
    let other = format!("http://localhost:{}/echo", addr.port());
    svc.oneshot(Request::get(other).body(Body::default()).unwrap())
        .await
        .unwrap();
    let seen = sandbox.seen("/echo");
    assert!(seen[0].headers.contains_key("authorization"));
    assert!(
        !seen[1].headers.contains_key("authorization"),
        "another origin got the token"
    );
}

#[tokio::test]
async fn the_replay_drives_the_inner_service_to_ready() {
    // ConcurrencyLimit panics when called without a permit from poll_ready.
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, scope(addr)))
        .concurrency_limit(1)
        .service(client());
    svc.clone().oneshot(get(addr, "/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc.oneshot(post(addr, "/pay", "{}")).await.unwrap();
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
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, scope(addr)).with_classifier(SaysExpired))
        .service(client());
    svc.clone().oneshot(get(addr, "/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc
        .clone()
        .oneshot(post(addr, "/says-expired", "{}"))
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
                .uri(format!("http://{addr}/scope"))
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
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    let svc = ServiceBuilder::new()
        .layer(
            TokenLayer::new(cache, scope(addr))
                .with_classifier(LooksAtEverything)
                .with_max_inspect_body(2),
        )
        .service(client());
    svc.clone().oneshot(get(addr, "/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc.oneshot(get(addr, "/x")).await.unwrap();
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
    let fetched = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&fetched);
    let cache = TokenCache::new(move || {
        let n = counter.fetch_add(1, SeqCst) + 1;
        async move { Ok::<_, FetchError>(Token::new(format!("tok-{n}"))) }
    });
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
    assert_eq!(fetched.load(SeqCst), 2);
}

#[tokio::test]
async fn with_cloned_bodies_the_client_keeps_its_own_body_type() {
    let (sandbox, addr) = Sandbox::start().await;
    let cache = TokenCache::new(sandbox.source());
    // hyper-util's client for `Full<Bytes>`, as it was before the layer.
    let plain: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, scope(addr)).cloning_bodies())
        .service(plain);
    svc.clone().oneshot(get(addr, "/warm")).await.unwrap();
    sandbox.expire_all();
    let response = svc.oneshot(post(addr, "/pay", "{\"n\":1}")).await.unwrap();
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
