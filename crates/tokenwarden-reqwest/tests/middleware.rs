//! The reqwest middleware against mockito, counting token-endpoint hits with `expect`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use mockito::{Matcher, Server, ServerGuard};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokenwarden_core::{FetchError, InsecureTransport, Presentation, Scope, Token, TokenCache};
use tokenwarden_reqwest::{NotReplayed, Replay, SkipToken, TokenMiddleware};
use tokenwarden_test_support::ClockHold;
use tokio::time::Instant;

/// A token endpoint on the mock server answering `tok-1`, `tok-2`, ...; returns the mock (to
/// assert its hits) and a source that calls it.
async fn token_endpoint(
    server: &mut ServerGuard,
    expected: usize,
) -> (mockito::Mock, impl tokenwarden_core::TokenSource) {
    let minted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&minted);
    let mock = server
        .mock("POST", "/token")
        .with_body_from_request(move |_| {
            format!("tok-{}", counter.fetch_add(1, SeqCst) + 1).into_bytes()
        })
        .expect(expected)
        .create_async()
        .await;
    let url = format!("{}/token", server.url());
    let http = reqwest::Client::new();
    let source = move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http.post(url).send().await.map_err(FetchError::transient)?;
            let token = response.text().await.map_err(FetchError::transient)?;
            Ok(Token::new(token).with_expires_in(Duration::from_secs(600)))
        }
    };
    (mock, source)
}

fn client(cache: TokenCache, origin: &str) -> ClientWithMiddleware {
    let scope = Scope::origin(origin).unwrap();
    ClientBuilder::new(tokenwarden_reqwest::client_builder().build().unwrap())
        .with(TokenMiddleware::new(cache, scope))
        .build()
}

#[tokio::test]
async fn headers_of_every_kind_are_injected() {
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 1).await;
    let api = server
        .mock("GET", "/v1/orders")
        .match_header("authorization", "Bearer tok-1")
        .match_header("token", "tok-1")
        .match_header("merchant-account", "FNS-12345")
        .expect(2)
        .create_async()
        .await;
    let presentation = Presentation::bearer()
        .with_header(HeaderName::from_static("token"))
        .with_fixed_header(
            HeaderName::from_static("merchant-account"),
            HeaderValue::from_static("FNS-12345"),
        );
    let cache = TokenCache::builder(source)
        .with_presentation(presentation)
        .build()
        .unwrap();
    let client = client(cache, &server.url());
    for _ in 0..2 {
        let response = client
            .get(format!("{}/v1/orders", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.extensions().get::<Replay>().is_none());
    }
    api.assert_async().await;
    tokens.assert_async().await;
}

const BODY: &str = r#"{"amount":1999,"currency":"EUR","reference":"order-42"}"#;

#[tokio::test]
async fn a_401_is_replayed_with_the_identical_json_body() {
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 2).await;
    let rejected = server
        .mock("POST", "/v1/payments")
        .match_header("authorization", "Bearer tok-1")
        .match_header("content-type", "application/json")
        .match_body(Matcher::Exact(BODY.into()))
        .with_status(401)
        .with_header("www-authenticate", r#"Bearer error="invalid_token""#)
        .with_body("expired")
        .expect(1)
        .create_async()
        .await;
    let accepted = server
        .mock("POST", "/v1/payments")
        .match_header("authorization", "Bearer tok-2")
        .match_header("content-type", "application/json")
        .match_body(Matcher::Exact(BODY.into()))
        .with_body("paid")
        .expect(1)
        .create_async()
        .await;
    let client = client(TokenCache::new(source), &server.url());
    let response = client
        .post(format!("{}/v1/payments", server.url()))
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
    rejected.assert_async().await;
    accepted.assert_async().await;
    tokens.assert_async().await;
}

// The first rejection opens a backoff window (125–250 ms) inside which the others are held off.
// Time stands still throughout, so every request falls inside it however slow the machine.
#[tokio::test(start_paused = true)]
async fn a_double_401_is_returned_and_fetches_stay_bounded() {
    let _clock = ClockHold::start();
    let start = Instant::now();
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 2).await;
    let api = server
        .mock("POST", "/v1/payments")
        .with_status(401)
        .expect(12)
        .create_async()
        .await;
    let cache = TokenCache::new(source);
    let client = client(cache.clone(), &server.url());
    for i in 0..11 {
        let response = client
            .post(format!("{}/v1/payments", server.url()))
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
    api.assert_async().await; // 2 for the first request, 1 for each of the other 10
    tokens.assert_async().await; // tok-1 and tok-2, nothing more
    assert_eq!(cache.stats().suppressed_invalidations, 11);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_401s_for_one_token_cause_one_fetch() {
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 2).await;
    let _rejected = server
        .mock("GET", "/v1/orders")
        .match_header("authorization", "Bearer tok-1")
        .with_status(401)
        .create_async()
        .await;
    let accepted = server
        .mock("GET", "/v1/orders")
        .match_header("authorization", "Bearer tok-2")
        .expect(300)
        .create_async()
        .await;
    let cache = TokenCache::new(source);
    cache.get().await.unwrap(); // tok-1, which the API no longer accepts
    let client = client(cache.clone(), &server.url());
    let url = format!("{}/v1/orders", server.url());
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    tokens.assert_async().await; // exactly 2: tok-1 and one for the whole storm
    accepted.assert_async().await;
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
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 2).await;
    let rejected = server
        .mock("POST", "/v1/upload")
        .match_header("authorization", "Bearer tok-1")
        .match_body("chunk-1chunk-2")
        .with_status(401)
        .expect(1)
        .create_async()
        .await;
    let replayed = server
        .mock("POST", "/v1/upload")
        .match_header("authorization", "Bearer tok-2")
        .match_body("chunk-1chunk-2")
        .expect(1)
        .create_async()
        .await;
    let client = client(TokenCache::new(source), &server.url());
    let response = client
        .post(format!("{}/v1/upload", server.url()))
        .body(stream(&["chunk-1", "chunk-2"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    rejected.assert_async().await;
    replayed.assert_async().await;
    tokens.assert_async().await;
}

#[tokio::test]
async fn a_streaming_body_over_the_cap_is_sent_once_and_the_next_request_succeeds() {
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 2).await;
    let upload = server
        .mock("POST", "/v1/upload")
        .match_header("authorization", "Bearer tok-1")
        .match_body("chunk-1chunk-2")
        .with_status(401)
        .expect(1)
        .create_async()
        .await;
    let next = server
        .mock("GET", "/v1/orders")
        .match_header("authorization", "Bearer tok-2")
        .expect(1)
        .create_async()
        .await;
    let scope = Scope::origin(&server.url()).unwrap();
    let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build().unwrap())
        .with(TokenMiddleware::new(TokenCache::new(source), scope).with_max_replay_body(10))
        .build();
    let response = client
        .post(format!("{}/v1/upload", server.url()))
        .body(stream(&["chunk-1", "chunk-2"]))
        .send()
        .await
        .expect("a body over the cap is still sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<Replay>(),
        Some(&Replay::NotReplayed(NotReplayed::BodyTooLarge))
    );
    let response = client
        .get(format!("{}/v1/orders", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    upload.assert_async().await;
    next.assert_async().await;
    tokens.assert_async().await;
}

#[tokio::test]
async fn the_opt_out_extension_sends_no_token() {
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 0).await;
    let public = server
        .mock("GET", "/v1/status")
        .match_header("authorization", Matcher::Missing)
        .expect(1)
        .create_async()
        .await;
    let client = client(TokenCache::new(source), &server.url());
    let response = client
        .get(format!("{}/v1/status", server.url()))
        .with_extension(SkipToken)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    public.assert_async().await;
    tokens.assert_async().await;
}

#[tokio::test]
async fn insufficient_scope_and_caller_credentials_are_not_refreshed() {
    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 1).await;
    let scope = server
        .mock("GET", "/v1/admin")
        .with_status(401)
        .with_header(
            "www-authenticate",
            r#"Bearer realm="api", error="insufficient_scope""#,
        )
        .expect(2)
        .create_async()
        .await;
    let client = client(TokenCache::new(source), &server.url());
    let url = format!("{}/v1/admin", server.url());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<Replay>().is_none());
    let response = client.get(&url).bearer_auth("mine").send().await.unwrap();
    assert!(response.extensions().get::<Replay>().is_none());
    scope.assert_async().await;
    tokens.assert_async().await;
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_before_sending() {
    let cache = TokenCache::new(|| async { Ok::<_, FetchError>(Token::new("t")) });
    let client = client(cache, "http://api.example.invalid");
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

    let mut server = Server::new_async().await;
    let (tokens, source) = token_endpoint(&mut server, 2).await;
    // First attempt: a transient 503. Second (the retry): the token has expired server-side,
    // 401 → the token middleware refreshes and replays inside that attempt. Then 200.
    let unavailable = server
        .mock("POST", "/v1/payments")
        .match_header("authorization", "Bearer tok-1")
        .with_status(503)
        .expect(1)
        .create_async()
        .await;
    let rejected = server
        .mock("POST", "/v1/payments")
        .match_header("authorization", "Bearer tok-1")
        .with_status(401)
        .expect(1)
        .create_async()
        .await;
    let accepted = server
        .mock("POST", "/v1/payments")
        .match_header("authorization", "Bearer tok-2")
        .match_body(BODY)
        .expect(1)
        .create_async()
        .await;
    let retry = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(10))
        .build_with_max_retries(3);
    let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build().unwrap())
        .with(TracingMiddleware::default())
        .with(RetryTransientMiddleware::new_with_policy(retry))
        .with(TokenMiddleware::new(
            TokenCache::new(source),
            Scope::origin(&server.url()).unwrap(),
        ))
        .build();
    let response = client
        .post(format!("{}/v1/payments", server.url()))
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    unavailable.assert_async().await;
    rejected.assert_async().await;
    accepted.assert_async().await;
    tokens.assert_async().await;
}
