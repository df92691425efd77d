//! Every gateway against mockito: the exact request each sends, what it makes of the answers,
//! and a request through a layer: token fetched once, injected, 401 → refresh → replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mockito::{Matcher, Mock, Server, ServerGuard};
use tokenwarden_core::{Error, Expiry, Secret, TokenCache, TokenSource};
use tokenwarden_gateways::boipa::{self, Action, ActionRequest, BoipaConfig};
use tokenwarden_gateways::generic::{ExpiryField, JsonSource};
use tokenwarden_gateways::payments::{self, ClientAppSource, SessionTokenSource, SessionTokens};
use tokenwarden_gateways::sipay::{self, SipayConfig, ThreeD};
use tokenwarden_gateways::torus::{self, TorusConfig};
use tokenwarden_gateways::{GatewayError, IssuerClient, ServiceSender};
use tokenwarden_origin::Scope;
use tokenwarden_test_support::{
    Recorder, Reply, chain, distinct_tokens, gateway_error, middleware_client, unused_addr,
};

/// A token endpoint answering `body(n)` for the n-th call; counts calls.
async fn issuer(
    server: &mut ServerGuard,
    path: &str,
    expect: usize,
    body: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (Mock, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let mock = server
        .mock("POST", path)
        .with_body_from_request(move |_| body(counter.fetch_add(1, SeqCst) + 1).into_bytes())
        .expect(expect)
        .create_async()
        .await;
    (mock, calls)
}

/// API mocks on `path`: `reject` answers 401, `accept` answers 200; returns the 200 mock.
async fn api(
    server: &mut ServerGuard,
    path: &str,
    header: &str,
    reject: &str,
    accept: &str,
) -> (Mock, Mock) {
    let rejected = server
        .mock("POST", path)
        .match_header(header, reject)
        .with_status(401)
        .expect(1)
        .create_async()
        .await;
    let accepted = server
        .mock("POST", path)
        .match_header(header, accept)
        .with_body("ok")
        .expect(1)
        .create_async()
        .await;
    (rejected, accepted)
}

/// POSTs `{}` to `path` on `server` through the middleware with `cache`: the answer is a `200`
/// and every one of `mocks` was met.
async fn post_through_middleware(
    server: &ServerGuard,
    cache: TokenCache,
    path: &str,
    mocks: [&Mock; 3],
) {
    let response = middleware_client(cache, &server.url())
        .post(format!("{}{path}", server.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for mock in mocks {
        mock.assert_async().await;
    }
}

/// A sender of token requests through hyper-util's client: no reqwest on the way.
fn hyper_sender() -> ServiceSender<Client<HttpConnector, Full<Bytes>>> {
    ServiceSender(Client::builder(TokioExecutor::new()).build_http())
}

// ---- BOIPA ------------------------------------------------------------------------------

fn boipa_success(n: usize) -> String {
    format!(
        r#"{{"result":"success","resultId":"r-{n}","merchantId":"1234567","additionalDetails":{{}},"processingTime":15,"token":"boipa-{n}"}}"#
    )
}

#[tokio::test]
async fn boipa_sends_every_form_field_with_a_fresh_timestamp_and_tokens_are_single_use() {
    let mut server = Server::new_async().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let token_endpoint = server
        .mock("POST", "/token")
        .match_header("content-type", "application/x-www-form-urlencoded")
        .match_request(|request| {
            let body = request.body().unwrap();
            let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            let value = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i128;
            let timestamp = value("timestamp")
                .and_then(|t| t.parse::<i128>().ok())
                .unwrap_or(0);
            names
                == [
                    "merchantId",
                    "password",
                    "action",
                    "timestamp",
                    "allowOriginUrl",
                    "brandId",
                    "channel",
                    "country",
                    "language",
                    "amount",
                    "currency",
                    "forceSecurePayment",
                ]
                && value("merchantId") == Some("1234567")
                && value("password") == Some("p@ss w0rd&=")
                && value("action") == Some("PURCHASE")
                && value("timestamp").is_some_and(|t| t.len() == 13)
                && (now - timestamp).abs() < 10_000
                && value("allowOriginUrl") == Some("https://shop.example.com")
                && value("brandId") == Some("77")
                && value("channel") == Some("ECOM")
                && value("country") == Some("IE")
                && value("language") == Some("en")
                && value("amount") == Some("19.99")
                && value("currency") == Some("EUR")
                && value("forceSecurePayment") == Some("true")
        })
        .with_body_from_request(move |_| {
            boipa_success(counter.fetch_add(1, SeqCst) + 1).into_bytes()
        })
        .expect(5)
        .create_async()
        .await;
    let config = BoipaConfig::new(
        server.url(),
        1_234_567,
        "p@ss w0rd&=",
        "https://shop.example.com",
    )
    .with_brand_id("77");
    let purchase = ActionRequest::new(Action::Purchase)
        .with_channel("ECOM")
        .with_country("IE")
        .with_language("en")
        .with_amount("19.99", "EUR")
        .with_force_secure_payment(true);
    let cache = boipa::cache(IssuerClient::new().unwrap(), config, purchase, 0)
        .build()
        .unwrap();
    let tokens = distinct_tokens(&cache, 5).await;
    assert_eq!(tokens.len(), 5, "a BOIPA token was handed out twice");
    token_endpoint.assert_async().await;
    assert!(!format!("{cache:?}").contains("p@ss"));
}

#[tokio::test]
async fn boipa_refusals_and_bad_answers_reach_the_caller_typed() {
    let mut server = Server::new_async().await;
    let _refusal = server
        .mock("POST", "/token")
        .with_body(r#"{"result":"failure","resultId":"53e7926b","additionalDetails":{},"errors":[{"messageCode":"This field is required in [REQUEST]","fieldName":"allowOriginUrl"}],"processingTime":5}"#)
        .expect(1)
        .create_async()
        .await;
    let config = BoipaConfig::new(server.url(), 1, "secret-password", "");
    let cache = boipa::cache(
        IssuerClient::new().unwrap(),
        config,
        ActionRequest::new(Action::Verify),
        0,
    )
    .build()
    .unwrap();
    let error = cache.get().await.unwrap_err();
    assert!(error.is_rejected() && !error.is_retryable());
    let GatewayError::Refused {
        codes,
        reference,
        status,
        ..
    } = gateway_error(&error)
    else {
        panic!("{error}")
    };
    assert_eq!(*status, StatusCode::OK);
    assert_eq!(reference.as_deref(), Some("53e7926b"));
    assert_eq!(codes[0].code, "allowOriginUrl");
    let text = error.chain();
    assert!(
        text.contains("BOIPA") && text.contains("This field is required"),
        "{text}"
    );
    assert!(!text.contains("secret-password"));
    // remembered: the application retrying at once does not reach the gateway again
    assert!(cache.get().await.unwrap_err().is_rejected());
}

#[tokio::test]
async fn boipa_end_to_end_each_request_its_own_token_and_a_401_replayed() {
    let mut server = Server::new_async().await;
    let (tokens, _) = issuer(&mut server, "/token", 2, boipa_success).await;
    let (rejected, accepted) =
        api(&mut server, "/api/purchase", "token", "boipa-1", "boipa-2").await;
    let config = BoipaConfig::new(server.url(), 1, "pw", "https://shop.example.com");
    let cache = boipa::cache(
        IssuerClient::new().unwrap(),
        config,
        ActionRequest::new(Action::Purchase),
        0,
    )
    .build()
    .unwrap();
    post_through_middleware(
        &server,
        cache,
        "/api/purchase",
        [&rejected, &accepted, &tokens],
    )
    .await;
}

// ---- Torus ------------------------------------------------------------------------------

#[tokio::test]
async fn torus_sends_the_request_token_and_json_credentials() {
    let mut server = Server::new_async().await;
    let generate = server
        .mock("POST", "/api/v1/session/generate")
        .match_header("content-type", "application/json")
        .match_header("token", "request-token-1")
        .match_body(Matcher::Json(
            serde_json::json!({"API_KEY": "key-1", "API_SECRET": "secret-1"}),
        ))
        .with_body(r#"{"AccessToken":"access-1"}"#)
        .expect(1)
        .create_async()
        .await;
    let config = TorusConfig::new(server.url(), "request-token-1", "key-1", "secret-1");
    let cache = torus::cache(IssuerClient::new().unwrap(), config)
        .build()
        .unwrap();
    let snapshot = cache.get().await.unwrap();
    assert_eq!(snapshot.token().secret().expose(), "access-1");
    assert_eq!(
        snapshot.token().expiry(),
        Expiry::In(Duration::from_secs(8 * 3600))
    );
    let header: Vec<_> = snapshot
        .headers()
        .map(|(n, v)| (n.as_str().to_owned(), v.clone()))
        .collect();
    assert_eq!(header[0].0, "token");
    generate.assert_async().await;
}

#[tokio::test]
async fn torus_a_rejected_request_token_is_terminal() {
    let mut server = Server::new_async().await;
    let generate = server
        .mock("POST", "/api/v1/session/generate")
        .with_status(401)
        .expect(1)
        .create_async()
        .await;
    let config = TorusConfig::new(server.url(), "expired-request-token", "k", "s");
    let cache = torus::cache(IssuerClient::new().unwrap(), config)
        .build()
        .unwrap();
    for _ in 0..100 {
        let error = cache.get().await.unwrap_err();
        assert!(error.is_rejected() && !error.is_retryable(), "{error}");
    }
    generate.assert_async().await; // once, not a hundred times
}

#[tokio::test]
async fn torus_end_to_end_through_the_tower_layer_and_hyper() {
    use tower::{ServiceBuilder, ServiceExt};

    let mut server = Server::new_async().await;
    let (tokens, _) = issuer(&mut server, "/api/v1/session/generate", 2, |n| {
        format!(r#"{{"AccessToken":"torus-{n}"}}"#)
    })
    .await;
    let (rejected, accepted) = api(&mut server, "/orders", "token", "torus-1", "torus-2").await;
    // The issuer is called through hyper-util too: no reqwest anywhere on this path.
    let config = TorusConfig::new(server.url(), "rt", "k", "s");
    let cache = torus::cache(hyper_sender(), config).build().unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new()
        .layer(tokenwarden_tower::TokenLayer::new(
            cache,
            Scope::origin(&server.url()).unwrap(),
        ))
        .service(client);
    let request = http::Request::post(format!("{}/orders", server.url()))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    rejected.assert_async().await;
    accepted.assert_async().await;
    tokens.assert_async().await;
}

// ---- Sipay ------------------------------------------------------------------------------

const SIPAY_DOCUMENTED: &str = include_str!("data/sipay_success.json");

#[tokio::test]
async fn sipay_sends_json_credentials_and_reads_the_documented_example() {
    let mut server = Server::new_async().await;
    let token = server
        .mock("POST", "/ccpayment/api/token")
        .match_header("content-type", "application/json")
        .match_body(Matcher::Json(
            serde_json::json!({"app_id": "app-1", "app_secret": "secret-1"}),
        ))
        .with_body(SIPAY_DOCUMENTED)
        .expect(1)
        .create_async()
        .await;
    let source = sipay::SipaySource::new(
        IssuerClient::new().unwrap(),
        SipayConfig::new(format!("{}/ccpayment", server.url()), "app-1", "secret-1"),
    )
    .unwrap();
    let token_value = source.fetch().await.unwrap();
    let Expiry::At(at) = token_value.expiry() else {
        panic!()
    };
    // 2021-01-29 13:46:01 UTC, i.e. 16:46:01 in Turkey
    assert_eq!(
        at.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        1_611_927_961
    );
    assert_eq!(token_value.metadata::<ThreeD>(), Some(&ThreeD::Choice));
    token.assert_async().await;
    // Through the cache, a token that expired in 2021 is a failed fetch, not a token.
    let cache = TokenCache::new(source);
    assert!(matches!(
        cache.get().await,
        Err(Error::AlreadyExpired { .. })
    ));
}

#[tokio::test]
async fn sipay_refusals_and_oversized_answers_are_typed() {
    let mut server = Server::new_async().await;
    let _refused = server
        .mock("POST", "/api/token")
        .match_body(Matcher::PartialJson(serde_json::json!({"app_id": "wrong"})))
        .with_body(r#"{"status_code":2,"status_description":"Invalid credentials"}"#)
        .create_async()
        .await;
    let huge = format!(
        r#"{{"status_code":100,"data":{{"token":"{}"}}}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    let _huge = server
        .mock("POST", "/api/token")
        .match_body(Matcher::PartialJson(serde_json::json!({"app_id": "huge"})))
        .with_body(huge)
        .create_async()
        .await;
    let refused = TokenCache::new(
        sipay::SipaySource::new(
            IssuerClient::new().unwrap(),
            SipayConfig::new(server.url(), "wrong", "s"),
        )
        .unwrap(),
    );
    let error = refused.get().await.unwrap_err();
    let GatewayError::Refused { codes, .. } = gateway_error(&error) else {
        panic!("{error}")
    };
    assert_eq!(
        (codes[0].code.as_str(), codes[0].message.as_str()),
        ("2", "Invalid credentials")
    );
    assert!(!error.is_retryable());

    for sender in ["reqwest", "tower"] {
        let config = SipayConfig::new(server.url(), "huge", "s");
        let source = match sender {
            "reqwest" => sipay::SipaySource::new(IssuerClient::new().unwrap(), config),
            _ => sipay::SipaySource::new(hyper_sender(), config),
        }
        .unwrap();
        let error = TokenCache::new(source).get().await.unwrap_err();
        assert!(
            matches!(
                gateway_error(&error),
                GatewayError::TooLarge { limit: 65_536, .. }
            ),
            "{sender}: {error}"
        );
        assert!(error.is_retryable());
    }
}

#[tokio::test]
async fn sipay_end_to_end_bearer_token_refreshed_after_a_401() {
    let mut server = Server::new_async().await;
    let (tokens, _) = issuer(&mut server, "/api/token", 2, |n| {
        format!(r#"{{"status_code":100,"status_description":"ok","data":{{"token":"sipay-{n}","is_3d":0,"expires_at":"2099-01-01 00:00:00"}}}}"#)
    })
    .await;
    let (rejected, accepted) = api(
        &mut server,
        "/api/paySmart3D",
        "authorization",
        "Bearer sipay-1",
        "Bearer sipay-2",
    )
    .await;
    let cache = sipay::cache(
        IssuerClient::new().unwrap(),
        SipayConfig::new(server.url(), "a", "s"),
    )
    .build()
    .unwrap();
    post_through_middleware(
        &server,
        cache,
        "/api/paySmart3D",
        [&rejected, &accepted, &tokens],
    )
    .await;
}

// ---- Payments API ---------------------------------------------------------------------------

#[tokio::test]
async fn payments_merchant_server_and_client_app_requests_have_the_documented_shape() {
    let mut server = Server::new_async().await;
    let session = server
        .mock("POST", "/session_token")
        .match_header("accept", "application/json")
        .match_header("content-type", "application/json")
        .match_header("authorization", "Bearer auth-token-A")
        .match_header("merchant-account", "FNS-12345")
        .with_body(r#"{"token":"sandbox_eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.sig"}"#)
        .expect(1)
        .create_async()
        .await;
    let source = SessionTokenSource::new(
        IssuerClient::new().unwrap(),
        &server.url(),
        &Secret::new("auth-token-A"),
        "FNS-12345",
    )
    .unwrap();
    let token = source.fetch().await.unwrap();
    let Expiry::At(at) = token.expiry() else {
        panic!()
    };
    assert_eq!(
        at.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        4_102_444_800
    );
    session.assert_async().await;
    assert!(!format!("{source:?}").contains("auth-token-A"));

    let merchant_endpoint = server
        .mock("POST", "/merchant/session")
        .match_header("x-app-key", "client-credential")
        .with_body(r#"{"token":"sandbox_opaque"}"#)
        .expect(1)
        .create_async()
        .await;
    let app = ClientAppSource::new(
        IssuerClient::new().unwrap(),
        &format!("{}/merchant/session", server.url()),
    )
    .unwrap()
    .with_header(
        HeaderName::from_static("x-app-key"),
        &Secret::new("client-credential"),
    )
    .unwrap();
    let token = app.fetch().await.unwrap();
    assert_eq!(
        token.expiry(),
        Expiry::In(payments::DEFAULT_SESSION_LIFETIME)
    );
    merchant_endpoint.assert_async().await;
}

#[tokio::test]
async fn payments_revoking_an_authentication_token_expires_its_session_tokens() {
    let mut server = Server::new_async().await;
    let minted_a = server
        .mock("POST", "/session_token")
        .match_header("authorization", "Bearer auth-A")
        .with_body(r#"{"token":"sandbox_A"}"#)
        .expect(2) // one for the shared cache, one minted for a client app
        .create_async()
        .await;
    let minted_b = server
        .mock("POST", "/session_token")
        .match_header("authorization", "Bearer auth-B")
        .with_body(r#"{"token":"sandbox_B"}"#)
        .expect(1)
        .create_async()
        .await;
    let api_a = server
        .mock("POST", "/payments")
        .match_header("authorization", "Bearer sandbox_A")
        .match_header("merchant-account", "FNS-1")
        .expect(1)
        .create_async()
        .await;
    let api_b = server
        .mock("POST", "/payments")
        .match_header("authorization", "Bearer sandbox_B")
        .expect(2)
        .create_async()
        .await;
    let sessions = SessionTokens::new(IssuerClient::new().unwrap(), server.url(), "FNS-1").unwrap();
    sessions
        .register("refunds", &Secret::new("auth-A"))
        .unwrap();
    sessions
        .register("checkout", &Secret::new("auth-B"))
        .unwrap();
    let (a, b) = (
        sessions.cache("refunds").unwrap(),
        sessions.cache("checkout").unwrap(),
    );
    let client_a = middleware_client(a.clone(), &server.url());
    let client_b = middleware_client(b, &server.url());
    let url = format!("{}/payments", server.url());
    assert_eq!(
        client_a.post(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client_b.post(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        sessions.mint("refunds").await.unwrap().secret().expose(),
        "sandbox_A"
    );

    assert!(sessions.revoke("refunds"));
    assert!(
        a.cached().is_none(),
        "the session token minted under it is gone"
    );
    let error = client_a.post(&url).send().await.unwrap_err();
    let text = chain(&error);
    assert!(text.contains("revoked"), "{text}");
    assert!(sessions.mint("refunds").await.is_err());
    assert!(sessions.cache("refunds").is_none());
    // the other authentication token's sessions are untouched
    assert_eq!(
        client_b.post(&url).send().await.unwrap().status(),
        StatusCode::OK
    );

    minted_a.assert_async().await;
    minted_b.assert_async().await;
    api_a.assert_async().await; // no request went out with A's session token after the revoke
    api_b.assert_async().await;
}

#[tokio::test]
async fn payments_rotating_an_authentication_token_keeps_live_clients_working() {
    let mut server = Server::new_async().await;
    let minted_old = server
        .mock("POST", "/session_token")
        .match_header("authorization", "Bearer auth-old")
        .with_body(r#"{"token":"sandbox_old"}"#)
        .expect(1)
        .create_async()
        .await;
    let minted_new = server
        .mock("POST", "/session_token")
        .match_header("authorization", "Bearer auth-new")
        .with_body(r#"{"token":"sandbox_new"}"#)
        .expect(2) // one minted for a client app, and the shared cache's next token
        .create_async()
        .await;
    let api_old = server
        .mock("POST", "/payments")
        .match_header("authorization", "Bearer sandbox_old")
        .expect(2)
        .create_async()
        .await;
    let api_new = server
        .mock("POST", "/payments")
        .match_header("authorization", "Bearer sandbox_new")
        .expect(1)
        .create_async()
        .await;
    let sessions = SessionTokens::new(IssuerClient::new().unwrap(), server.url(), "FNS-1").unwrap();
    sessions
        .register("checkout", &Secret::new("auth-old"))
        .unwrap();
    // A client built before the rotation.
    let cache = sessions.cache("checkout").unwrap();
    let client = middleware_client(cache.clone(), &server.url());
    let url = format!("{}/payments", server.url());
    assert_eq!(
        client.post(&url).send().await.unwrap().status(),
        StatusCode::OK
    );

    sessions
        .register("checkout", &Secret::new("auth-new"))
        .unwrap();
    // The session token minted under the old authentication token is still valid: the client
    // built before the rotation goes on with it, and a client app gets one minted with the new
    // authentication token.
    assert_eq!(
        client.post(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        sessions.mint("checkout").await.unwrap().secret().expose(),
        "sandbox_new"
    );
    // Once the API rejects the old session token, the same cache and client mint with the new
    // authentication token and replay.
    let _ = server
        .mock("POST", "/payments")
        .match_header("authorization", "Bearer sandbox_old")
        .with_status(401)
        .create_async()
        .await;
    assert_eq!(
        client.post(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    minted_old.assert_async().await;
    minted_new.assert_async().await;
    api_old.assert_async().await;
    api_new.assert_async().await;
}

#[tokio::test]
async fn payments_a_key_never_registered_is_unknown_not_revoked() {
    let server = Server::new_async().await;
    let sessions = SessionTokens::new(IssuerClient::new().unwrap(), server.url(), "FNS-1").unwrap();
    let error = sessions.mint("refunds").await.unwrap_err();
    assert!(
        matches!(&error, Error::UnknownKey { key } if key == "refunds"),
        "{error:?}"
    );
    assert!(!chain(&error).contains("revoked"), "{}", chain(&error));
    assert!(!sessions.revoke("refunds"));
    assert!(sessions.cache("refunds").is_none());
}

#[tokio::test]
async fn payments_client_app_end_to_end_renews_its_session_token_after_a_401() {
    let mut server = Server::new_async().await;
    let (tokens, _) = issuer(&mut server, "/merchant/session", 2, |n| {
        format!(r#"{{"token":"sandbox_s{n}"}}"#)
    })
    .await;
    let (rejected, accepted) = api(
        &mut server,
        "/payments",
        "authorization",
        "Bearer sandbox_s1",
        "Bearer sandbox_s2",
    )
    .await;
    let source = ClientAppSource::new(
        IssuerClient::new().unwrap(),
        &format!("{}/merchant/session", server.url()),
    )
    .unwrap();
    let cache = TokenCache::builder(source)
        .with_presentation(payments::presentation("FNS-1").unwrap())
        .build()
        .unwrap();
    post_through_middleware(&server, cache, "/payments", [&rejected, &accepted, &tokens]).await;
}

// ---- generic JSON ----------------------------------------------------------------------------

#[tokio::test]
async fn the_generic_source_posts_credentials_and_reads_by_pointer() {
    let mut server = Server::new_async().await;
    let oauth = server
        .mock("POST", "/oauth/token")
        .match_header("content-type", "application/x-www-form-urlencoded")
        .match_body(Matcher::AllOf(vec![
            Matcher::UrlEncoded("grant_type".into(), "client_credentials".into()),
            Matcher::UrlEncoded("client_secret".into(), "s3cr3t".into()),
        ]))
        .with_body(r#"{"data":{"jwt":"opaque-1","ttl":"120"}}"#)
        .expect(1)
        .create_async()
        .await;
    let source = JsonSource::form(
        IssuerClient::new().unwrap(),
        &format!("{}/oauth/token", server.url()),
        [
            ("grant_type", "client_credentials"),
            ("client_secret", "s3cr3t"),
        ],
    )
    .unwrap()
    .with_name("example")
    .with_token_pointer("/data/jwt")
    .with_expiry(ExpiryField::InSeconds("/data/ttl".into()));
    assert!(!format!("{source:?}").contains("s3cr3t"));
    let token = source.fetch().await.unwrap();
    assert_eq!(token.secret().expose(), "opaque-1");
    assert_eq!(token.expiry(), Expiry::In(Duration::from_secs(120)));
    oauth.assert_async().await;
    let e = source
        .parse(StatusCode::OK, br#"{"data":{"jwt":5}}"#)
        .unwrap_err();
    assert!(e.to_string().contains("`/data/jwt` is a number"), "{e}");
}

#[tokio::test]
async fn transport_failures_keep_the_client_error_and_say_what_broke() {
    // Nothing listens: unreachable, a connect error, each message once in the chain.
    let closed = unused_addr();
    let source = JsonSource::json(
        IssuerClient::new().unwrap(),
        &format!("http://{closed}/token?key=s3cr3t"),
        serde_json::json!({}),
    )
    .unwrap();
    let error = source.fetch().await.unwrap_err();
    let gateway = error.get_ref().downcast_ref::<GatewayError>().unwrap();
    assert!(
        matches!(gateway, GatewayError::Unreachable { .. }),
        "{gateway:?}"
    );
    let transport = gateway.transport().unwrap();
    assert!(transport.is_connect(), "{transport:?}");
    assert!(!transport.is_timeout());
    assert!(transport.get_ref().is::<reqwest::Error>());
    let text = chain(gateway);
    assert_eq!(text.matches("could not be reached").count(), 1, "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");

    // An answer that breaks off half way is not "could not be reached", through either sender:
    // a `200` with a `content-length` of 100, then 9 bytes and the connection closes.
    let issuer = Recorder::start(Reply::json(r#"{"token":"#).cut_short(100)).await;
    let url = format!("{}/token", issuer.origin("http", "127.0.0.1"));
    let reqwest_source =
        JsonSource::json(IssuerClient::new().unwrap(), &url, serde_json::json!({})).unwrap();
    let hyper_source = JsonSource::json(hyper_sender(), &url, serde_json::json!({})).unwrap();
    for source in [reqwest_source, hyper_source] {
        let error = source.fetch().await.unwrap_err();
        let gateway = error.get_ref().downcast_ref::<GatewayError>().unwrap();
        let GatewayError::Interrupted { status, source, .. } = gateway else {
            panic!("{gateway:?}")
        };
        assert_eq!(*status, StatusCode::OK);
        assert!(!source.is_connect(), "{source:?}");
        assert!(gateway.is_retryable());
        let text = chain(gateway);
        assert!(text.contains("broke off while it was read"), "{text}");
        assert!(!text.contains("could not be reached"), "{text}");
    }
}

#[tokio::test]
async fn an_issuer_back_from_an_outage_is_asked_at_once_and_its_probe_carries_no_secret() {
    // The issuer is down; the first failure alone sets a 5-10 s backoff.
    let addr = unused_addr();
    let source = JsonSource::json(
        IssuerClient::new().unwrap(),
        &format!("http://user:pa55@{addr}/oauth/token?api_key=k3y"),
        serde_json::json!({"client_secret": "s3cr3t"}),
    )
    .unwrap();
    let cache = TokenCache::builder(source)
        .with_first_fetch_backoff(Duration::from_secs(10))
        .with_recovery_probe(Duration::from_millis(200))
        .build()
        .unwrap();
    let error = cache.get().await.unwrap_err();
    assert!(
        matches!(gateway_error(&error), GatewayError::Unreachable { .. }),
        "{}",
        error.chain()
    );
    assert!(
        matches!(cache.get().await, Err(Error::BackingOff { retry_in, .. }) if retry_in > Duration::from_secs(4))
    );

    // It comes back: a probe finds it answering (405 to a bare GET) and the token request
    // goes out at once, not at the end of the backoff.
    let mut server = Server::new_with_opts_async(mockito::ServerOpts {
        port: addr.port(),
        ..Default::default()
    })
    .await;
    let probes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&probes);
    let probe = server
        .mock("GET", Matcher::Any)
        .with_status(405)
        .with_body_from_request(move |request| {
            let headers: Vec<String> = request
                .headers()
                .iter()
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
                .collect();
            seen.lock().unwrap().push((
                request.path_and_query().to_owned(),
                headers,
                request.body().map(Vec::len).unwrap_or(0),
            ));
            Vec::new()
        })
        .expect_at_least(1)
        .create_async()
        .await;
    let token_endpoint = server
        .mock("POST", "/oauth/token")
        .match_query(Matcher::UrlEncoded("api_key".into(), "k3y".into()))
        .with_body(r#"{"access_token":"back-1"}"#)
        .expect(1)
        .create_async()
        .await;
    let back = std::time::Instant::now();
    let token = loop {
        if let Ok(token) = cache.get().await {
            break token;
        }
        assert!(back.elapsed() < Duration::from_secs(3), "still backing off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(tokenwarden_test_support::secret(&token), "back-1");
    assert!(
        // The next probe within 200 ms, then a random spread of up to 200 ms.
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(cache.stats().recoveries, 1);
    probe.assert_async().await;
    token_endpoint.assert_async().await;
    for (target, headers, body) in probes.lock().unwrap().iter() {
        assert_eq!(target, "/oauth/token", "no query on a probe");
        assert_eq!(*body, 0);
        let headers = headers.join("\n");
        for secret in ["pa55", "k3y", "s3cr3t", "authorization"] {
            assert!(!headers.to_ascii_lowercase().contains(secret), "{headers}");
        }
    }
}

#[tokio::test]
async fn a_busy_issuer_saying_retry_after_is_not_asked_again_before_then() {
    let mut server = Server::new_async().await;
    let busy = server
        .mock("POST", "/sipay/api/token")
        .with_status(503)
        .with_header("retry-after", "7")
        .expect(1)
        .create_async()
        .await;
    let config = SipayConfig::new(format!("{}/sipay", server.url()), "app-id", "app-secret");
    let cache = sipay::cache(IssuerClient::new().unwrap(), config)
        .build()
        .unwrap();
    let error = cache.get().await.unwrap_err();
    let GatewayError::Status {
        status,
        retry_after,
        ..
    } = gateway_error(&error)
    else {
        panic!("{}", error.chain())
    };
    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(*retry_after, Some(Duration::from_secs(7)));
    assert!(error.is_retryable());
    // Asked again at once: the cache waits the issuer's 7 s, not its own 100 ms backoff.
    let Err(Error::BackingOff { retry_in, .. }) = cache.get().await else {
        panic!("the cache should be waiting")
    };
    assert!(retry_in > Duration::from_secs(6), "{retry_in:?}");
    busy.assert_async().await;
}

#[tokio::test]
async fn standard_oauth_error_bodies_are_typed_and_say_what_to_fix() {
    let cases = [
        (401, "invalid_client", false, false),
        (400, "invalid_grant", false, false),
        (400, "invalid_scope", false, true),
        (400, "unsupported_grant_type", false, true),
        (503, "temporarily_unavailable", true, false),
    ];
    for (status, code, retryable, configuration) in cases {
        let mut server = Server::new_async().await;
        let body = format!(r#"{{"error":"{code}","error_description":"explained: {code}"}}"#);
        let endpoint = server
            .mock("POST", "/oauth/token")
            .with_status(status)
            .with_body(body)
            .expect(1)
            .create_async()
            .await;
        let source = JsonSource::form(
            IssuerClient::new().unwrap(),
            &format!("{}/oauth/token", server.url()),
            [
                ("grant_type", "client_credentials"),
                ("client_secret", "s3cr3t"),
            ],
        )
        .unwrap();
        let error = source.fetch().await.unwrap_err();
        let gateway = error.get_ref().downcast_ref::<GatewayError>().unwrap();
        let GatewayError::OAuth {
            error: got,
            description,
            ..
        } = gateway
        else {
            panic!("{code}: {gateway:?}")
        };
        assert_eq!(got, code);
        assert_eq!(
            description.as_deref(),
            Some(format!("explained: {code}").as_str())
        );
        assert_eq!(gateway.is_retryable(), retryable, "{code}");
        assert_eq!(error.is_retryable(), retryable, "{code}");
        assert_eq!(gateway.is_configuration(), configuration, "{code}");
        let text = gateway.to_string();
        assert!(text.contains(code) && text.contains("explained"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        endpoint.assert_async().await;
    }
    // A 400 without a standard body is still a status error.
    let mut server = Server::new_async().await;
    let _plain = server
        .mock("POST", "/oauth/token")
        .with_status(400)
        .with_body("bad request")
        .create_async()
        .await;
    let source = JsonSource::form(
        IssuerClient::new().unwrap(),
        &format!("{}/oauth/token", server.url()),
        [("grant_type", "client_credentials")],
    )
    .unwrap();
    let error = source.fetch().await.unwrap_err();
    let gateway = error.get_ref().downcast_ref::<GatewayError>().unwrap();
    assert!(
        matches!(gateway, GatewayError::Status { .. }),
        "{gateway:?}"
    );
}

#[tokio::test]
async fn an_answer_without_expires_in_falls_back_to_the_jwt_then_the_default_lifetime() {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        format!(r#"{{"sub":"app","exp":{exp}}}"#),
    );
    let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{claims}.c2ln");
    for (answer, expiry) in [
        (
            r#"{"access_token":"opaque-1","token_type":"Bearer"}"#.to_owned(),
            Expiry::Unknown,
        ),
        (
            format!(r#"{{"access_token":"{jwt}","expires_in":null}}"#),
            Expiry::At(UNIX_EPOCH + Duration::from_secs(exp)),
        ),
        (
            r#"{"access_token":"opaque-2","expires_in":"120"}"#.to_owned(),
            Expiry::In(Duration::from_secs(120)),
        ),
    ] {
        let mut server = Server::new_async().await;
        let _endpoint = server
            .mock("POST", "/oauth/token")
            .with_body(answer.clone())
            .create_async()
            .await;
        let source = JsonSource::form(
            IssuerClient::new().unwrap(),
            &format!("{}/oauth/token", server.url()),
            [("grant_type", "client_credentials")],
        )
        .unwrap()
        .with_expiry(ExpiryField::InSeconds("/expires_in".into()));
        let token = source
            .fetch()
            .await
            .unwrap_or_else(|e| panic!("{answer}: {e}"));
        assert_eq!(token.expiry(), expiry, "{answer}");
    }
}

mod oauth2_client_credentials {
    use super::*;
    use tokenwarden_gateways::oauth2::{self, ClientAuth, ClientCredentials};

    fn credentials(server: &ServerGuard) -> ClientCredentials {
        // An id and a secret with characters form-encoding changes (RFC 6749 §2.3.1).
        ClientCredentials::new(
            IssuerClient::new().unwrap(),
            &format!("{}/oauth/token", server.url()),
            "my client",
            "s3:cr/t+",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn basic_auth_sends_the_form_encoded_pair_and_the_grant() {
        let mut server = Server::new_async().await;
        // base64("my+client:s3%3Acr%2Ft%2B")
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "my+client:s3%3Acr%2Ft%2B"
            )
        );
        let endpoint = server
            .mock("POST", "/oauth/token")
            .match_header("authorization", basic.as_str())
            .match_header("content-type", "application/x-www-form-urlencoded")
            .match_body(Matcher::AllOf(vec![
                Matcher::UrlEncoded("grant_type".into(), "client_credentials".into()),
                Matcher::UrlEncoded("scope".into(), "payments:read payments:write".into()),
                Matcher::UrlEncoded("audience".into(), "https://api.example.com".into()),
                Matcher::UrlEncoded("resource".into(), "https://api.example.com/v1".into()),
            ]))
            .with_body(r#"{"access_token":"at-1","token_type":"bearer","expires_in":3600}"#)
            .expect(1)
            .create_async()
            .await;
        let source = credentials(&server)
            .with_scopes(["payments:read", "payments:write"])
            .with_audience("https://api.example.com")
            .with_resource("https://api.example.com/v1");
        let debug = format!("{source:?}");
        assert!(
            !debug.contains("s3:cr") && !debug.contains("s3%3Acr"),
            "{debug}"
        );
        let cache = oauth2::cache(source).build().unwrap();
        let token = cache.get().await.unwrap();
        assert_eq!(token.token().secret().expose(), "at-1");
        assert_eq!(
            token.token().expiry(),
            Expiry::In(Duration::from_secs(3600))
        );
        let mut headers = http::HeaderMap::new();
        token.apply_to(&mut headers);
        assert_eq!(headers["authorization"], "Bearer at-1");
        endpoint.assert_async().await;
    }

    #[tokio::test]
    async fn post_auth_sends_the_credentials_in_the_form_and_no_basic_header() {
        let mut server = Server::new_async().await;
        let endpoint = server
            .mock("POST", "/oauth/token")
            .match_header("authorization", Matcher::Missing)
            .match_body(Matcher::AllOf(vec![
                Matcher::UrlEncoded("grant_type".into(), "client_credentials".into()),
                Matcher::UrlEncoded("client_id".into(), "my client".into()),
                Matcher::UrlEncoded("client_secret".into(), "s3:cr/t+".into()),
            ]))
            .with_body(r#"{"access_token":"at-2","token_type":"Bearer","expires_in":"60"}"#)
            .expect(1)
            .create_async()
            .await;
        let source = credentials(&server).with_client_auth(ClientAuth::Post);
        let token = source.fetch().await.unwrap();
        assert_eq!(token.expiry(), Expiry::In(Duration::from_secs(60)));
        endpoint.assert_async().await;
    }

    #[tokio::test]
    async fn a_token_type_other_than_bearer_is_refused_unless_accepted() {
        let mut server = Server::new_async().await;
        let _endpoint = server
            .mock("POST", "/oauth/token")
            .with_body(r#"{"access_token":"at-3","token_type":"DPoP","expires_in":60}"#)
            .create_async()
            .await;
        let error = credentials(&server).fetch().await.unwrap_err();
        let gateway = error.get_ref().downcast_ref::<GatewayError>().unwrap();
        assert!(
            matches!(gateway, GatewayError::UnsupportedTokenType { token_type, .. } if token_type == "DPoP"),
            "{gateway:?}"
        );
        assert!(!error.is_retryable(), "not retried in a loop");
        let accepted = credentials(&server).with_token_type("dpop");
        assert_eq!(accepted.fetch().await.unwrap().secret().expose(), "at-3");
    }

    #[tokio::test]
    async fn bad_client_credentials_are_a_typed_rejection() {
        let mut server = Server::new_async().await;
        let endpoint = server
            .mock("POST", "/oauth/token")
            .with_status(401)
            .with_body(
                r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
            )
            .expect(1)
            .create_async()
            .await;
        let cache = oauth2::cache(credentials(&server)).build().unwrap();
        let error = cache.get().await.unwrap_err();
        assert!(error.is_rejected(), "{}", error.chain());
        assert!(
            error.chain().contains("Client authentication failed"),
            "{}",
            error.chain()
        );
        assert!(!error.chain().contains("s3:cr"), "{}", error.chain());
        // Remembered: asked again at once, the endpoint is not called again.
        assert!(cache.get().await.is_err());
        endpoint.assert_async().await;
    }

    #[tokio::test]
    async fn the_token_endpoint_is_discovered_from_the_issuers_metadata() {
        // RFC 8414 first.
        let mut server = Server::new_async().await;
        let token_url = format!("{}/oauth2/v1/token", server.url());
        let metadata = server
            .mock("GET", "/.well-known/oauth-authorization-server")
            .with_body(format!(
                r#"{{"issuer":"{0}","token_endpoint":"{token_url}"}}"#,
                server.url()
            ))
            .expect(1)
            .create_async()
            .await;
        let endpoint = server
            .mock("POST", "/oauth2/v1/token")
            .with_body(r#"{"access_token":"at-d","token_type":"Bearer","expires_in":60}"#)
            .expect(1)
            .create_async()
            .await;
        let source = ClientCredentials::discover(
            IssuerClient::new().unwrap(),
            &server.url(),
            "id",
            "secret",
        )
        .await
        .unwrap();
        assert_eq!(source.fetch().await.unwrap().secret().expose(), "at-d");
        metadata.assert_async().await;
        endpoint.assert_async().await;

        // OpenID Connect's document when the RFC 8414 one is not there.
        let mut server = Server::new_async().await;
        let token_url = format!("{}/connect/token", server.url());
        let _missing = server
            .mock("GET", "/.well-known/oauth-authorization-server")
            .with_status(404)
            .create_async()
            .await;
        let _openid = server
            .mock("GET", "/.well-known/openid-configuration")
            .with_body(format!(
                r#"{{"issuer":"{}","token_endpoint":"{token_url}"}}"#,
                server.url()
            ))
            .create_async()
            .await;
        let found = ClientCredentials::discover(
            IssuerClient::new().unwrap(),
            &server.url(),
            "id",
            "secret",
        )
        .await
        .unwrap();
        assert!(format!("{found:?}").contains("/connect/token"), "{found:?}");

        // A token endpoint in clear text off loopback is refused, as a configured one would be.
        let mut server = Server::new_async().await;
        let _plain = server
            .mock("GET", "/.well-known/oauth-authorization-server")
            .with_body(format!(
                r#"{{"issuer":"{}","token_endpoint":"http://auth.example.com/token"}}"#,
                server.url()
            ))
            .create_async()
            .await;
        let refused = ClientCredentials::discover(
            IssuerClient::new().unwrap(),
            &server.url(),
            "id",
            "secret",
        )
        .await
        .unwrap_err();
        assert!(refused.to_string().contains("plain http"), "{refused}");

        // Metadata naming another issuer is not believed (RFC 8414 §3.3): the client's
        // credentials would go to a token endpoint the configured issuer does not vouch for.
        let mut server = Server::new_async().await;
        let _foreign = server
            .mock("GET", "/.well-known/oauth-authorization-server")
            .with_body(
                r#"{"issuer":"https://evil.example","token_endpoint":"https://evil.example/token"}"#,
            )
            .create_async()
            .await;
        let _openid = server
            .mock("GET", "/.well-known/openid-configuration")
            .with_status(404)
            .create_async()
            .await;
        let foreign = ClientCredentials::discover(
            IssuerClient::new().unwrap(),
            &server.url(),
            "id",
            "secret",
        )
        .await
        .unwrap_err();
        assert!(foreign.to_string().contains("issuer"), "{foreign}");
        assert!(!foreign.is_retryable(), "{foreign:?}");

        // A redirect on the metadata is not followed.
        let mut server = Server::new_async().await;
        let _moved = server
            .mock("GET", "/.well-known/oauth-authorization-server")
            .with_status(302)
            .with_header(
                "location",
                "https://evil.example/.well-known/oauth-authorization-server",
            )
            .create_async()
            .await;
        let _openid = server
            .mock("GET", "/.well-known/openid-configuration")
            .with_status(404)
            .create_async()
            .await;
        let error = ClientCredentials::discover(
            IssuerClient::new().unwrap(),
            &server.url(),
            "id",
            "secret",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                GatewayError::Status { .. } | GatewayError::Redirected { .. }
            ),
            "{error:?}"
        );
    }
}
