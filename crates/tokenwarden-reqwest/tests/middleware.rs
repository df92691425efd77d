//! The reqwest middleware against a loopback API, with a counting issuer.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use http_body_util::StreamBody;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokenwarden_core::{FetchError, Token, TokenCache};
use tokenwarden_origin::{InsecureTransport, Scope};
use tokenwarden_reqwest::{LayerPolicy, NotReplayed, Replay, SkipToken, TokenMiddleware};
use tokenwarden_test_support::{
    Answer, ClockHold, CountingIssuer, LoopbackApi, Received, every_kind_of_header,
    middleware_client,
};
use tokio::time::Instant;

/// An issuer minting `tok-1`, `tok-2`, ..., each valid for 600 s, counting its calls.
fn issuer() -> CountingIssuer {
    CountingIssuer::up().with_lifetime(Duration::from_secs(600))
}

/// A loopback API answering by `route`, an [`issuer`], and a client whose cache calls it.
async fn start(
    route: impl Fn(&Received) -> Answer + Send + Sync + 'static,
) -> (LoopbackApi, CountingIssuer, ClientWithMiddleware) {
    let api = LoopbackApi::start(route).await;
    let issuer = issuer();
    let client = middleware_client(TokenCache::new(issuer.source()), &api.origin());
    (api, issuer, client)
}

/// Each request the API received: method, path, `Authorization` (`-`: none), body.
fn requests(api: &LoopbackApi) -> Vec<String> {
    let line = |seen: &Received| {
        let (method, path) = (&seen.method, &seen.path);
        let token = seen.header("authorization").unwrap_or("-");
        let body = String::from_utf8_lossy(&seen.body);
        format!("{method} {path} {token} {body}")
            .trim_end()
            .to_owned()
    };
    api.received().iter().map(line).collect()
}

/// Rejects `tok-1` with a bare `401`, accepts `tok-2`; answers anything else `501`.
fn second_token_accepted(seen: &Received) -> Answer {
    match seen.header("authorization") {
        Some("Bearer tok-1") => Answer::new(401, ""),
        Some("Bearer tok-2") => Answer::new(200, ""),
        _ => Answer::new(501, "not expected"),
    }
}

#[tokio::test]
async fn headers_of_every_kind_are_injected() {
    let api = LoopbackApi::start(|_| Answer::new(200, "")).await;
    let issuer = issuer();
    let cache = TokenCache::builder(issuer.source())
        .with_presentation(every_kind_of_header())
        .build()
        .unwrap();
    let client = middleware_client(cache, &api.origin());
    for _ in 0..2 {
        let response = client.get(api.url("/v1/orders")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.extensions().get::<Replay>().is_none());
    }
    assert_eq!(requests(&api), ["GET /v1/orders Bearer tok-1"; 2]);
    for seen in api.received() {
        assert_eq!(seen.header("token"), Some("tok-1"));
        assert_eq!(seen.header("merchant-account"), Some("FNS-12345"));
    }
    assert_eq!(issuer.calls(), 1);
}

const BODY: &str = r#"{"amount":1999,"currency":"EUR","reference":"order-42"}"#;

#[tokio::test]
async fn a_401_is_replayed_with_the_identical_json_body() {
    let (api, issuer, client) = start(|seen| match seen.header("authorization") {
        Some("Bearer tok-1") => Answer::new(401, "expired")
            .with_header("www-authenticate", r#"Bearer error="invalid_token""#),
        Some("Bearer tok-2") => Answer::new(200, "paid"),
        _ => Answer::new(501, "not expected"),
    })
    .await;
    let response = client
        .post(api.url("/v1/payments"))
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    assert_eq!(response.text().await.unwrap(), "paid");
    assert_eq!(
        requests(&api),
        [
            format!("POST /v1/payments Bearer tok-1 {BODY}"),
            format!("POST /v1/payments Bearer tok-2 {BODY}"),
        ]
    );
    for seen in api.received() {
        assert_eq!(seen.header("content-type"), Some("application/json"));
    }
    assert_eq!(issuer.calls(), 2);
}

// The first rejection opens a backoff window (125–250 ms) inside which the others are held off.
// Time stands still throughout, so every request falls inside it however slow the machine.
#[tokio::test(start_paused = true)]
async fn a_double_401_is_returned_and_fetches_stay_bounded() {
    let _clock = ClockHold::start();
    let start = Instant::now();
    let api = LoopbackApi::start(|_| Answer::new(401, "")).await;
    let issuer = issuer();
    let cache = TokenCache::new(issuer.source());
    let client = middleware_client(cache.clone(), &api.origin());
    for i in 0..11 {
        let response = client
            .post(api.url("/v1/payments"))
            .body(BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let replay = response.extensions().get::<Replay>().cloned();
        if i == 0 {
            // sent, rejected, replayed with a fresh token, rejected again: returned
            assert!(
                matches!(replay, Some(Replay::Replayed { .. })),
                "{replay:?}"
            );
        } else {
            // fresh tokens keep being rejected: the cache holds off replacing this one
            assert_eq!(
                replay,
                Some(Replay::NotReplayed(NotReplayed::StillRejected))
            );
        }
    }
    // 2 for the first request, 1 for each of the other 10
    assert_eq!(api.received().len(), 12);
    assert_eq!(issuer.calls(), 2, "tok-1 and tok-2, nothing more");
    assert_eq!(cache.stats().suppressed_invalidations, 11);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_401s_for_one_token_cause_one_fetch() {
    let api = LoopbackApi::start(second_token_accepted).await;
    let issuer = issuer();
    let cache = TokenCache::new(issuer.source());
    cache.get().await.unwrap(); // tok-1, which the API no longer accepts
    let client = middleware_client(cache.clone(), &api.origin());
    let url = api.url("/v1/orders");
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(issuer.calls(), 2, "tok-1 and one for the whole storm");
    let accepted = requests(&api)
        .iter()
        .filter(|r| *r == "GET /v1/orders Bearer tok-2")
        .count();
    assert_eq!(accepted, 300);
    assert_eq!(cache.stats().invalidations, 1);
}

fn stream(chunks: &[&'static str]) -> reqwest::Body {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from(*c))))
        .collect();
    reqwest::Body::wrap(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn a_streaming_body_is_copied_as_it_is_sent_and_replayed_within_the_cap() {
    let (api, issuer, client) = start(second_token_accepted).await;
    let response = client
        .post(api.url("/v1/upload"))
        .body(stream(&["chunk-1", "chunk-2"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    assert_eq!(
        requests(&api),
        [
            "POST /v1/upload Bearer tok-1 chunk-1chunk-2",
            "POST /v1/upload Bearer tok-2 chunk-1chunk-2",
        ]
    );
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn a_streaming_body_over_the_cap_is_sent_once_and_the_next_request_succeeds() {
    let api = LoopbackApi::start(second_token_accepted).await;
    let issuer = issuer();
    let scope = Scope::origin(&api.origin()).unwrap();
    let policy = LayerPolicy::new(scope).with_max_replay_body(10);
    let middleware = TokenMiddleware::new(TokenCache::new(issuer.source()), policy);
    let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build().unwrap())
        .with(middleware)
        .build();
    let response = client
        .post(api.url("/v1/upload"))
        .body(stream(&["chunk-1", "chunk-2"]))
        .send()
        .await
        .expect("a body over the cap is still sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<Replay>(),
        Some(&Replay::NotReplayed(NotReplayed::BodyTooLarge))
    );
    let response = client.get(api.url("/v1/orders")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        requests(&api),
        [
            "POST /v1/upload Bearer tok-1 chunk-1chunk-2",
            "GET /v1/orders Bearer tok-2",
        ]
    );
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn the_opt_out_extension_sends_no_token() {
    let (api, issuer, client) = start(|_| Answer::new(200, "")).await;
    let response = client
        .get(api.url("/v1/status"))
        .with_extension(SkipToken)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(requests(&api), ["GET /v1/status -"]);
    assert_eq!(issuer.calls(), 0);
}

#[tokio::test]
async fn insufficient_scope_and_caller_credentials_are_not_refreshed() {
    let (api, issuer, client) = start(|_| {
        let challenge = r#"Bearer realm="api", error="insufficient_scope""#;
        Answer::new(401, "").with_header("www-authenticate", challenge)
    })
    .await;
    let url = api.url("/v1/admin");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<Replay>().is_none());
    let response = client.get(&url).bearer_auth("mine").send().await.unwrap();
    assert!(response.extensions().get::<Replay>().is_none());
    assert_eq!(
        requests(&api),
        ["GET /v1/admin Bearer tok-1", "GET /v1/admin Bearer mine"]
    );
    assert_eq!(issuer.calls(), 1);
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_before_sending() {
    let cache = TokenCache::new(|| async { Ok::<_, FetchError>(Token::new("t")) });
    let client = middleware_client(cache, "http://api.example.invalid");
    let err = client
        .get("http://api.example.invalid/v1")
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected a middleware error, got {err}");
    };
    let insecure = err
        .downcast_ref::<InsecureTransport>()
        .expect("InsecureTransport");
    assert_eq!(insecure.host, "api.example.invalid");
}

#[tokio::test]
async fn each_retry_attempt_carries_the_current_token() {
    use reqwest_retry::RetryTransientMiddleware;
    use reqwest_retry::policies::ExponentialBackoff;
    use reqwest_tracing::TracingMiddleware;

    // First attempt: a transient 503. Second (the retry): the token has expired server-side,
    // 401 → the token middleware refreshes and replays inside that attempt. Then 200.
    let sent_with_tok_1 = AtomicUsize::new(0);
    let api = LoopbackApi::start(move |seen| match seen.header("authorization") {
        Some("Bearer tok-1") => match sent_with_tok_1.fetch_add(1, SeqCst) {
            0 => Answer::new(503, ""),
            _ => Answer::new(401, ""),
        },
        Some("Bearer tok-2") => Answer::new(200, ""),
        _ => Answer::new(501, "not expected"),
    })
    .await;
    let issuer = issuer();
    let retry = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(10))
        .build_with_max_retries(3);
    let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build().unwrap())
        .with(TracingMiddleware::default())
        .with(RetryTransientMiddleware::new_with_policy(retry))
        .with(TokenMiddleware::new(
            TokenCache::new(issuer.source()),
            Scope::origin(&api.origin()).unwrap(),
        ))
        .build();
    let response = client
        .post(api.url("/v1/payments"))
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sent = |token| format!("POST /v1/payments Bearer {token} {BODY}");
    assert_eq!(
        requests(&api),
        [sent("tok-1"), sent("tok-1"), sent("tok-2")]
    );
    assert_eq!(issuer.calls(), 2);
}
