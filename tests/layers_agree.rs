//! Both HTTP layers, one table of scenarios.
//!
//! Every scenario runs through `TokenLayer` over hyper-util's client and through
//! `TokenMiddleware` over a reqwest client from `client_builder()`, each time against a fresh
//! loopback API and a fresh counting issuer. The layers must agree — the same responses and
//! `Replay` markers for the caller, the same requests on the wire (less the headers each client
//! sets its own way), the same number of issuer calls — and each scenario also states what that
//! shared behaviour must be. A failing scenario lists every problem it found, for both layers.

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::ClientWithMiddleware;
use tokenwarden::{Classifier, LayerPolicy, Replay, Scope, SkipToken, TokenCache, Verdict};
use tokenwarden_reqwest::{TokenMiddleware, client_builder};
use tokenwarden_test_support::{
    Answer, ClockHold, CountingIssuer, Listener, LoopbackApi, Received, Route, chain,
};
use tokenwarden_tower::{RequestBody, TokenLayer, TokenService};
use tokio::time::Instant;
use tower::{BoxError, Layer as _, ServiceExt};

// ---------------------------------------------------------------------------------------------
// The harness: the two clients, what a caller sends and what it gets
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Tower,
    Reqwest,
}

type CallerBody = UnsyncBoxBody<Bytes, BoxError>;

enum Client {
    Tower(Box<TokenService<HyperClient<HttpConnector, RequestBody<CallerBody>>>>),
    Reqwest(ClientWithMiddleware),
}

impl Client {
    /// The layer over its HTTP client, set up with `policy`.
    fn new(layer: Layer, cache: TokenCache, policy: LayerPolicy) -> Self {
        match layer {
            Layer::Tower => {
                let http = HyperClient::builder(TokioExecutor::new()).build_http();
                let layer = TokenLayer::new(cache, policy);
                Client::Tower(Box::new(layer.layer(http)))
            }
            Layer::Reqwest => {
                // No proxy from the environment: the requests must reach the loopback API.
                let http = client_builder().no_proxy().build().unwrap();
                let middleware = TokenMiddleware::new(cache, policy);
                let client = reqwest_middleware::ClientBuilder::new(http).with(middleware);
                Client::Reqwest(client.build())
            }
        }
    }

    async fn send(&self, url: &str, req: &Req) -> Result<Got, String> {
        let start = Instant::now();
        match self {
            Client::Tower(service) => {
                let mut request = Request::builder().method(req.method.clone()).uri(url);
                for (name, value) in &req.headers {
                    request = request.header(*name, *value);
                }
                let mut request = request.body(req.payload.tower()).unwrap();
                if req.skip_token {
                    request.extensions_mut().insert(SkipToken);
                }
                let response = (**service).clone().oneshot(request).await;
                let response = response.map_err(|e| chain(&*e))?;
                Ok(Got::read(response, None, start.elapsed(), req.read_for).await)
            }
            Client::Reqwest(client) => {
                let mut request = client.request(req.method.clone(), url);
                for (name, value) in &req.headers {
                    request = request.header(*name, *value);
                }
                if let Some(body) = req.payload.reqwest() {
                    request = request.body(body);
                }
                if req.skip_token {
                    request = request.with_extension(SkipToken);
                }
                let response = request.send().await.map_err(|e| chain(&e))?;
                let final_url = Some(response.url().to_string());
                let response = http::Response::from(response);
                Ok(Got::read(response, final_url, start.elapsed(), req.read_for).await)
            }
        }
    }
}

/// A request body as the caller hands it over.
#[derive(Clone, Debug)]
enum Payload {
    Empty,
    Bytes(Bytes),
    /// The chunks of a stream of unknown length.
    Stream(Vec<Bytes>),
}

impl Payload {
    fn stream(chunks: Vec<Bytes>) -> StreamBody<impl futures_util::Stream<Item = FrameResult>> {
        let frames = chunks.into_iter().map(|c| Ok(Frame::data(c)));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn tower(&self) -> CallerBody {
        match self {
            Payload::Empty => Empty::new().map_err(Into::into).boxed_unsync(),
            Payload::Bytes(bytes) => Full::new(bytes.clone()).map_err(Into::into).boxed_unsync(),
            Payload::Stream(chunks) => Self::stream(chunks.clone()).boxed_unsync(),
        }
    }

    fn reqwest(&self) -> Option<reqwest::Body> {
        match self {
            Payload::Empty => None,
            Payload::Bytes(bytes) => Some(reqwest::Body::from(bytes.clone())),
            Payload::Stream(chunks) => Some(reqwest::Body::wrap(Self::stream(chunks.clone()))),
        }
    }
}

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// A request as a scenario describes it.
#[derive(Clone, Debug)]
struct Req {
    method: Method,
    to: Listener,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    payload: Payload,
    skip_token: bool,
    /// How long the caller reads the response body before it gives up on the rest.
    read_for: Duration,
}

impl Req {
    fn get(path: &'static str) -> Self {
        Self {
            method: Method::GET,
            to: Listener::Api,
            path,
            headers: Vec::new(),
            payload: Payload::Empty,
            skip_token: false,
            read_for: Duration::from_secs(5),
        }
    }

    fn post(path: &'static str, body: impl Into<Bytes>) -> Self {
        let payload = Payload::Bytes(body.into());
        Self {
            method: Method::POST,
            payload,
            ..Self::get(path)
        }
    }

    fn post_json(path: &'static str, json: &'static str) -> Self {
        Self::post(path, json).header("content-type", "application/json")
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn streamed(mut self, chunks: &[&'static str]) -> Self {
        let chunks = chunks.iter().map(|c| Bytes::from_static(c.as_bytes()));
        self.payload = Payload::Stream(chunks.collect());
        self
    }
}

/// What the caller got.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    /// The `Replay` extension, `-` if there is none.
    marker: String,
    /// As much of the body as came within the request's `read_for`.
    body: Bytes,
    /// From the call to the response head.
    head_after: Duration,
    /// `response.url()` (reqwest only).
    url: Option<String>,
}

impl Got {
    async fn read<B>(
        response: Response<B>,
        url: Option<String>,
        head: Duration,
        read_for: Duration,
    ) -> Self
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        let (parts, mut body) = response.into_parts();
        let marker = match parts.extensions.get::<Replay>() {
            None => "-".to_owned(),
            Some(Replay::Replayed { .. }) => "Replayed".to_owned(),
            Some(Replay::NotReplayed(why)) => format!("NotReplayed({why:?})"),
            Some(other) => format!("{other:?}"),
        };
        let (deadline, mut bytes) = (Instant::now() + read_for, Vec::new());
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
            bytes.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d));
        }
        let (status, body) = (parts.status, Bytes::from(bytes));
        Self {
            status,
            marker,
            body,
            head_after: head,
            url,
        }
    }

    /// `status marker "body"`, e.g. `200 Replayed "ok"`.
    fn line(&self) -> String {
        let (status, body) = (self.status.as_u16(), String::from_utf8_lossy(&self.body));
        format!("{status} {} {body:?}", self.marker)
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios, runs and the report
// ---------------------------------------------------------------------------------------------

const BOTH: &[Layer] = &[Layer::Tower, Layer::Reqwest];

/// An API, the layers' policy, an issuer, and the requests a caller sends one after another.
struct Scenario {
    route: Route,
    policy: fn(LayerPolicy) -> LayerPolicy,
    issuer: fn() -> CountingIssuer,
    requests: Vec<Req>,
    layers: &'static [Layer],
}

impl Scenario {
    fn new(route: Route, requests: impl IntoIterator<Item = Req>) -> Self {
        let requests = requests.into_iter().collect();
        Self {
            route,
            policy: |p| p,
            issuer: CountingIssuer::up,
            requests,
            layers: BOTH,
        }
    }

    /// Runs it through each layer, each with a fresh API, issuer and cache; then checks that
    /// the layers agree and that each run meets `expectations`, and fails listing every problem.
    async fn expect(self, expectations: impl Fn(&Run, &mut Report)) {
        let mut runs = Vec::new();
        for &layer in self.layers {
            runs.push(self.run_on(layer).await);
        }
        let mut report = Report(Vec::new());
        if let [a, b] = &runs[..] {
            // Both failing agree: the error texts are each client's own.
            let outcome = |r: &Run| {
                r.got
                    .iter()
                    .map(|g| g.as_ref().map_or("error".into(), Got::line))
                    .collect::<Vec<_>>()
            };
            report.agree("responses", a, b, outcome);
            report.agree("requests on the wire", a, b, |r| {
                r.seen.iter().map(Received::to_string).collect::<Vec<_>>()
            });
            report.agree("issuer calls", a, b, |r| r.issuer_calls);
        }
        runs.iter().for_each(|run| expectations(run, &mut report));
        report.finish(&runs);
    }

    async fn run_on(&self, layer: Layer) -> Run {
        let api = LoopbackApi::start(self.route).await;
        let issuer = (self.issuer)();
        let cache = TokenCache::new(issuer.source());
        let scope = Scope::origin(&api.origin()).unwrap();
        let policy = (self.policy)(LayerPolicy::new(scope.clone()));
        let client = Client::new(layer, cache, policy);
        let (mut urls, mut got) = (Vec::new(), Vec::new());
        for request in &self.requests {
            let url = match request.to {
                Listener::Api => api.url(request.path),
                Listener::Other => api.other_url(request.path),
            };
            got.push(client.send(&url, request).await);
            urls.push(url);
        }
        let (seen, issuer_calls) = (api.received(), issuer.calls());
        Run {
            layer,
            urls,
            got,
            seen,
            issuer_calls,
        }
    }
}

/// One scenario through one layer.
struct Run {
    layer: Layer,
    urls: Vec<String>,
    got: Vec<Result<Got, String>>,
    seen: Vec<Received>,
    issuer_calls: usize,
}

impl Run {
    /// One line per response ([`Got::line`]), or `error: …`.
    fn responses(&self) -> Vec<String> {
        let line = |got: &Result<Got, String>| {
            got.as_ref()
                .map_or_else(|e| format!("error: {e}"), Got::line)
        };
        self.got.iter().map(line).collect()
    }

    fn got(&self, i: usize) -> Option<&Got> {
        self.got.get(i).and_then(|got| got.as_ref().ok())
    }

    /// The `Authorization` of each request the API saw (`-`: none).
    fn tokens_seen(&self) -> Vec<&str> {
        self.seen
            .iter()
            .map(|s| s.header("authorization").unwrap_or("-"))
            .collect()
    }

    fn bodies_seen(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|s| String::from_utf8_lossy(&s.body).into_owned())
            .collect()
    }
}

/// The problems found so far.
struct Report(Vec<String>);

impl Report {
    fn eq<A: PartialEq<E> + Debug, E: Debug>(
        &mut self,
        run: &Run,
        what: &str,
        actual: A,
        expected: E,
    ) {
        if actual != expected {
            let layer = run.layer;
            self.0.push(format!(
                "{layer:?}: {what}:\n      got      {actual:?}\n      expected {expected:?}"
            ));
        }
    }

    /// The response to request `i` came within `limit` of the call.
    fn within(&mut self, run: &Run, i: usize, limit: Duration) {
        let head = run.got(i).map(|g| g.head_after);
        if head.is_none_or(|head| head > limit) {
            let (layer, head) = (run.layer, head.map_or("never".into(), |h| format!("{h:?}")));
            self.0.push(format!(
                "{layer:?}: response {i} came after {head}, expected within {limit:?}"
            ));
        }
    }

    fn agree<T: PartialEq + Debug>(
        &mut self,
        what: &str,
        a: &Run,
        b: &Run,
        view: impl Fn(&Run) -> T,
    ) {
        let (left, right, la, lb) = (view(a), view(b), a.layer, b.layer);
        if left != right {
            self.0.push(format!(
                "the layers disagree on {what}:\n      {la:?}: {left:?}\n      {lb:?}: {right:?}"
            ));
        }
    }

    fn finish(self, runs: &[Run]) {
        if self.0.is_empty() {
            return;
        }
        let mut text = format!("{} problem(s):\n  {}\n", self.0.len(), self.0.join("\n  "));
        for run in runs {
            text += &format!("{:?} responses [time to head]:\n", run.layer);
            for (line, got) in run.responses().iter().zip(&run.got) {
                let after = got
                    .as_ref()
                    .map(|g| format!("{:?}", g.head_after))
                    .unwrap_or_default();
                text += &format!("    {line}  [{after}]\n");
            }
        }
        panic!("{text}");
    }
}

/// The route of most scenarios: `tok-1` is rejected as expired, later tokens are accepted.
fn first_token_expired(seen: &Received) -> Answer {
    match seen.header("authorization") {
        Some("Bearer tok-1") => expired(""),
        Some(_) => Answer::new(200, "ok"),
        None => Answer::new(401, "no token"),
    }
}

/// A `401` whose challenge says the token is no longer valid.
fn expired(body: &'static str) -> Answer {
    let challenge = r#"Bearer realm="api", error="invalid_token""#;
    Answer::new(401, body).with_header("www-authenticate", challenge)
}

/// A classifier that reads the body of a `400`: "expired" in it means the token was rejected.
struct SaysExpired;

impl Classifier for SaysExpired {
    fn classify(&self, status: StatusCode, _: &HeaderMap) -> Verdict {
        match status {
            StatusCode::UNAUTHORIZED => Verdict::Rejected,
            StatusCode::BAD_REQUEST => Verdict::InspectBody,
            _ => Verdict::Accepted,
        }
    }

    fn classify_body(&self, _: StatusCode, _: &HeaderMap, body: &[u8]) -> bool {
        body.windows(7).any(|w| w == b"expired")
    }
}

fn says_expired(policy: LayerPolicy) -> LayerPolicy {
    policy.with_classifier(SaysExpired)
}

const ORDER: &str = r#"{"amount":1999,"currency":"EUR","reference":"order-42"}"#;
const BAD_AMOUNT: &str = r#"{"error":"amount must be positive"}"#;

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s01_every_request_carries_the_token_fetched_once() {
    let route: Route = |seen| match seen.header("authorization") {
        Some("Bearer tok-1") => Answer::new(200, "ok"),
        _ => Answer::new(401, ""),
    };
    let first = [
        Req::get("/orders"),
        Req::post_json("/orders", ORDER),
        Req::post("/upload", "").streamed(&["chunk-1,", "chunk-2"]),
    ];
    let requests = first.into_iter().chain(vec![Req::get("/orders"); 8]);
    Scenario::new(route, requests)
        .expect(|run, r| {
            r.eq(run, "responses", run.responses(), vec![r#"200 - "ok""#; 11]);
            r.eq(
                run,
                "tokens seen",
                run.tokens_seen(),
                vec!["Bearer tok-1"; 11],
            );
            let bodies: Vec<String> = run.bodies_seen().into_iter().take(3).collect();
            r.eq(run, "bodies seen", bodies, ["", ORDER, "chunk-1,chunk-2"]);
            let json = run.seen.get(1).and_then(|s| s.header("content-type"));
            r.eq(
                run,
                "content type of the POST",
                json,
                Some("application/json"),
            );
            r.eq(run, "issuer calls", run.issuer_calls, 1);
        })
        .await;
}

#[tokio::test]
async fn s02_a_401_is_replayed_once_with_a_fresh_token_and_the_same_bytes() {
    Scenario::new(first_token_expired, [Req::post_json("/payments", ORDER)])
        .expect(|run, r| {
            r.eq(run, "responses", run.responses(), [r#"200 Replayed "ok""#]);
            let tokens = ["Bearer tok-1", "Bearer tok-2"];
            r.eq(run, "tokens seen", run.tokens_seen(), tokens);
            r.eq(run, "bodies seen", run.bodies_seen(), [ORDER, ORDER]);
            // Everything else on the wire is the same: method, path, every other header.
            let without_token = |s: &Received| {
                let mut s = s.clone();
                s.headers.retain(|(name, _)| name != "authorization");
                s.to_string()
            };
            let sent: Vec<String> = run.seen.iter().map(without_token).collect();
            r.eq(
                run,
                "the replay, but for its token",
                sent.last(),
                sent.first(),
            );
            r.eq(run, "issuer calls", run.issuer_calls, 2);
        })
        .await;
}

// The first rejection of a fresh token opens the cache's backoff window (125–250 ms); the clock
// is held still, so every later request falls inside it however slow the machine.
#[tokio::test(start_paused = true)]
async fn s03_an_api_rejecting_every_token_gets_its_401_back_and_bounded_fetches() {
    let _clock = ClockHold::start();
    let start = Instant::now();
    let requests = vec![Req::post_json("/payments", ORDER); 6];
    Scenario::new(|_| expired("rejected"), requests)
        .expect(|run, r| {
            let mut expected = vec![r#"401 Replayed "rejected""#];
            expected.extend([r#"401 NotReplayed(StillRejected) "rejected""#; 5]);
            r.eq(run, "responses", run.responses(), expected);
            let tokens = [vec!["Bearer tok-1"], vec!["Bearer tok-2"; 6]].concat();
            r.eq(run, "tokens seen", run.tokens_seen(), tokens);
            r.eq(run, "issuer calls", run.issuer_calls, 2);
        })
        .await;
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn s04_insufficient_scope_is_not_replayed() {
    let route: Route = |_| {
        let challenge = r#"Bearer realm="api", error="insufficient_scope""#;
        Answer::new(401, "needs orders:write").with_header("www-authenticate", challenge)
    };
    Scenario::new(route, [Req::get("/admin")])
        .expect(|run, r| {
            r.eq(
                run,
                "responses",
                run.responses(),
                [r#"401 - "needs orders:write""#],
            );
            r.eq(run, "tokens seen", run.tokens_seen(), ["Bearer tok-1"]);
            r.eq(run, "issuer calls", run.issuer_calls, 1);
        })
        .await;
}

#[tokio::test]
async fn s05_skip_token_sends_no_token_and_fetches_none() {
    let skipping = Req {
        skip_token: true,
        ..Req::get("/status")
    };
    Scenario::new(|_| Answer::new(200, "public"), [skipping])
        .expect(|run, r| {
            r.eq(run, "responses", run.responses(), [r#"200 - "public""#]);
            r.eq(run, "tokens seen", run.tokens_seen(), ["-"]);
            r.eq(run, "issuer calls", run.issuer_calls, 0);
        })
        .await;
}

#[tokio::test]
async fn s06_another_origin_gets_the_request_untouched() {
    let post = Req::post_json("/orders", ORDER).header("x-request-id", "r-1");
    let requests = [Req::get("/orders"), post].map(|req| Req {
        to: Listener::Other,
        ..req
    });
    Scenario::new(|_| Answer::new(200, "ok"), requests)
        .expect(|run, r| {
            r.eq(run, "responses", run.responses(), [r#"200 - "ok""#; 2]);
            let post = run.seen.get(1).map(Received::to_string);
            let length = ORDER.len();
            let headers = format!("content-length: {length}; content-type: application/json");
            let untouched = format!("Other POST /orders [{headers}; x-request-id: r-1] {ORDER:?}");
            r.eq(run, "the POST", post, Some(untouched));
            r.eq(run, "tokens seen", run.tokens_seen(), ["-", "-"]);
            r.eq(run, "issuer calls", run.issuer_calls, 0);
        })
        .await;
}

#[tokio::test]
async fn s07_a_body_reading_classifier_replays_expired_and_passes_other_400s_whole() {
    let route: Route = |seen| match (seen.path.as_str(), seen.header("authorization")) {
        ("/expired", Some("Bearer tok-1")) => Answer::new(400, r#"{"error":"session expired"}"#),
        ("/expired", _) => Answer::new(200, "ok"),
        _ => Answer::new(400, BAD_AMOUNT),
    };
    let requests = [
        Req::post_json("/expired", ORDER),
        Req::post_json("/payments", ORDER),
    ];
    Scenario {
        policy: says_expired,
        ..Scenario::new(route, requests)
    }
    .expect(|run, r| {
        let passed = format!("400 - {BAD_AMOUNT:?}");
        r.eq(
            run,
            "responses",
            run.responses(),
            [r#"200 Replayed "ok""#, &passed],
        );
        let tokens = ["Bearer tok-1", "Bearer tok-2", "Bearer tok-2"];
        r.eq(run, "tokens seen", run.tokens_seen(), tokens);
        r.eq(run, "bodies seen", run.bodies_seen(), [ORDER; 3]);
        r.eq(run, "issuer calls", run.issuer_calls, 2);
    })
    .await;
}

#[tokio::test]
async fn s08_a_body_over_the_replay_cap_is_sent_once_and_not_replayed() {
    let requests = [Req::post("/upload", vec![b'x'; 64]), Req::get("/orders")];
    let scenario = Scenario::new(first_token_expired, requests);
    Scenario {
        policy: |p| p.with_max_replay_body(16),
        ..scenario
    }
    .expect(|run, r| {
        let rejected = r#"401 NotReplayed(BodyTooLarge) """#;
        r.eq(
            run,
            "responses",
            run.responses(),
            [rejected, r#"200 - "ok""#],
        );
        // Sent once; its rejection still invalidated tok-1, so the next request has tok-2.
        let tokens = ["Bearer tok-1", "Bearer tok-2"];
        r.eq(run, "tokens seen", run.tokens_seen(), tokens);
        r.eq(run, "issuer calls", run.issuer_calls, 2);
    })
    .await;
}

#[tokio::test]
async fn s13_a_stream_within_the_cap_is_copied_as_it_is_sent_and_replayed() {
    let requests = [Req::post("/upload", "").streamed(&["chunk-1", "chunk-2"])];
    Scenario::new(first_token_expired, requests)
        .expect(|run, r| {
            r.eq(run, "responses", run.responses(), [r#"200 Replayed "ok""#]);
            let tokens = ["Bearer tok-1", "Bearer tok-2"];
            r.eq(run, "tokens seen", run.tokens_seen(), tokens);
            let bodies: Vec<_> = run.seen.iter().map(|s| s.body.clone()).collect();
            r.eq(run, "bodies", bodies, ["chunk-1chunk-2", "chunk-1chunk-2"]);
        })
        .await;
}

#[tokio::test]
async fn s14_a_stream_over_the_cap_is_sent_once_and_not_replayed() {
    let requests = [
        Req::post("/upload", "").streamed(&["chunk-1", "chunk-2"]),
        Req::get("/orders"),
    ];
    let scenario = Scenario::new(first_token_expired, requests);
    Scenario {
        policy: |p| p.with_max_replay_body(10),
        ..scenario
    }
    .expect(|run, r| {
        let rejected = r#"401 NotReplayed(BodyTooLarge) """#;
        r.eq(
            run,
            "responses",
            run.responses(),
            [rejected, r#"200 - "ok""#],
        );
        let tokens = ["Bearer tok-1", "Bearer tok-2"];
        r.eq(run, "tokens seen", run.tokens_seen(), tokens);
    })
    .await;
}

#[tokio::test]
async fn s09_a_caller_with_its_own_credentials_needs_no_issuer() {
    let route: Route = |seen| match seen.header("authorization") {
        Some("Bearer mine") => Answer::new(200, "mine"),
        _ => Answer::new(401, ""),
    };
    let requests = [Req::get("/orders").header("authorization", "Bearer mine")];
    Scenario {
        issuer: CountingIssuer::down,
        ..Scenario::new(route, requests)
    }
    .expect(|run, r| {
        r.eq(run, "responses", run.responses(), [r#"200 - "mine""#]);
        r.eq(run, "tokens seen", run.tokens_seen(), ["Bearer mine"]);
        r.eq(run, "issuer calls", run.issuer_calls, 0);
    })
    .await;
}

// Timing under a paused clock that moves by itself. The API, both clients and the issuer run on
// this test's one thread, and what one writes on loopback is readable at once, so the runtime
// idles only when every task waits on a timer; the clock then jumps to the next one. Durations
// are exact and cost no real time (the 30 s stall passes in microseconds). `ClockHold` would
// freeze the clock instead, and the stall would never end.
#[tokio::test(start_paused = true)]
async fn s10_a_stalled_body_under_inspection_does_not_hold_the_response() {
    const SENT: &str = r#"{"error":"inval"#;
    let route: Route = |_| Answer::new(400, SENT).then(&[r#"id"}"#], Duration::from_secs(30));
    let post = Req::post_json("/payments", ORDER);
    let requests = [Req {
        read_for: Duration::from_secs(1),
        ..post
    }];
    Scenario {
        policy: says_expired,
        ..Scenario::new(route, requests)
    }
    .expect(|run, r| {
        let got = run.got(0).map(|g| (g.status.as_u16(), g.marker.as_str()));
        r.eq(run, "status and marker", got, Some((400, "-")));
        r.within(run, 0, Duration::from_secs(3));
        let body = run.got(0).map(|g| g.body.clone()).unwrap_or_default();
        let start = body.get(..SENT.len());
        r.eq(
            run,
            "body read for 1 s starts as sent",
            start,
            Some(SENT.as_bytes()),
        );
        r.eq(run, "issuer calls", run.issuer_calls, 1);
    })
    .await;
}

// Paused clock that moves by itself, as above.
#[tokio::test(start_paused = true)]
async fn s11_a_slow_401_body_does_not_delay_the_replay() {
    let route: Route = |seen| match seen.header("authorization") {
        Some("Bearer tok-1") => {
            expired("token expired").then(&["."; 10], Duration::from_millis(500))
        }
        _ => Answer::new(200, "ok"),
    };
    Scenario::new(route, [Req::post_json("/payments", ORDER)])
        .expect(|run, r| {
            r.eq(run, "responses", run.responses(), [r#"200 Replayed "ok""#]);
            // The issuer answers at once: only the 401's trickling body can delay the replay.
            r.within(run, 0, Duration::from_millis(500));
            r.eq(run, "bodies seen", run.bodies_seen(), [ORDER, ORDER]);
            r.eq(run, "issuer calls", run.issuer_calls, 2);
        })
        .await;
}

#[tokio::test]
async fn s12_reqwest_keeps_the_url_of_an_inspected_response() {
    let scenario = Scenario::new(
        |_| Answer::new(400, BAD_AMOUNT),
        [Req::post_json("/payments", ORDER)],
    );
    Scenario {
        policy: says_expired,
        layers: &[Layer::Reqwest],
        ..scenario
    }
    .expect(|run, r| {
        r.eq(
            run,
            "responses",
            run.responses(),
            [format!("400 - {BAD_AMOUNT:?}")],
        );
        let url = run.got(0).and_then(|g| g.url.as_deref());
        r.eq(run, "response.url()", url, Some(run.urls[0].as_str()));
    })
    .await;
}
