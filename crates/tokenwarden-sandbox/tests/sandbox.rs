//! The sandbox speaks each gateway the way its source expects, rejects what it should, injects
//! faults and counts.

use std::time::Duration;

use tokenwarden_core::{Error, Secret, TokenCache, TokenCacheBuilder};
use tokenwarden_gateways::boipa::{self, Action, ActionRequest};
use tokenwarden_gateways::payments::SessionTokens;
use tokenwarden_gateways::{GatewayError, IssuerClient, sipay, torus};
use tokenwarden_sandbox::{Fault, Gateway, Sandbox, SandboxConfig, credentials};
use tokenwarden_test_support::{gateway_error, middleware_client};

/// The Payments API's session tokens, under the sandbox's authentication token as `main`.
fn sessions(sandbox: &Sandbox, http: IssuerClient) -> SessionTokens {
    let sessions = SessionTokens::new(
        http,
        sandbox.base_url(Gateway::Payments),
        credentials::PAYMENTS_MERCHANT,
    )
    .unwrap();
    sessions
        .register(
            "main",
            &Secret::new(credentials::PAYMENTS_AUTHENTICATION_TOKEN),
        )
        .unwrap();
    sessions
}

/// The error of the first token request of a cache built from `builder`.
async fn first_error(builder: TokenCacheBuilder) -> Error {
    builder.build().unwrap().get().await.unwrap_err()
}

/// Sends `n` requests to `gateway`'s API through a client with `cache`; returns the statuses.
async fn call(sandbox: &Sandbox, gateway: Gateway, cache: &TokenCache, n: usize) -> Vec<u16> {
    let client = middleware_client(cache.clone(), &sandbox.url());
    let mut statuses = Vec::new();
    for _ in 0..n {
        let response = client
            .post(sandbox.api_url(gateway, "orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn every_gateway_issues_tokens_its_api_accepts_and_forgets_on_demand() {
    let sandbox = Sandbox::start().await.unwrap();
    let http = IssuerClient::new().unwrap();
    let caches = [
        (
            Gateway::Torus,
            torus::cache(http.clone(), sandbox.torus_config())
                .build()
                .unwrap(),
        ),
        (
            Gateway::Sipay,
            sipay::cache(http.clone(), sandbox.sipay_config())
                .build()
                .unwrap(),
        ),
        (
            Gateway::Payments,
            sessions(&sandbox, http.clone()).cache("main").unwrap(),
        ),
    ];
    for (gateway, cache) in &caches {
        assert_eq!(
            call(&sandbox, *gateway, cache, 3).await,
            [200, 200, 200],
            "{gateway}"
        );
        sandbox.expire_tokens(*gateway);
        assert_eq!(
            call(&sandbox, *gateway, cache, 2).await,
            [200, 200],
            "{gateway}: replayed after 401"
        );
        let stats = sandbox.stats(*gateway);
        assert_eq!(stats.token_requests, 2, "{gateway}");
        assert_eq!(
            stats.api_requests, 6,
            "{gateway}: 3 + 1 rejected + 1 replay + 1"
        );
        assert_eq!(stats.unauthorized, 1, "{gateway}");
    }
}

#[tokio::test]
async fn boipa_tokens_are_single_use() {
    let sandbox = Sandbox::start().await.unwrap();
    let cache = boipa::cache(
        IssuerClient::new().unwrap(),
        sandbox.boipa_config(),
        ActionRequest::new(Action::Purchase),
        0,
    )
    .build()
    .unwrap();
    assert_eq!(call(&sandbox, Gateway::Boipa, &cache, 4).await, [200; 4]);
    assert_eq!(sandbox.stats(Gateway::Boipa).tokens_issued, 4);
    // a token used twice is rejected
    let token = cache.get().await.unwrap();
    let client = reqwest::Client::new();
    let url = sandbox.api_url(Gateway::Boipa, "orders");
    let send = || {
        client
            .post(&url)
            .header("token", token.token().secret().expose())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn faults_come_back_as_typed_errors() {
    let sandbox = Sandbox::start().await.unwrap();
    let cache = |fetch_timeout| {
        sipay::cache(IssuerClient::new().unwrap(), sandbox.sipay_config())
            .with_fetch_timeout(fetch_timeout)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(2))
            .with_rejection_hold(Duration::from_millis(1))
            .build()
            .unwrap()
    };
    sandbox.inject(Gateway::Sipay, Fault::ServerError, 1);
    let e = cache(Duration::from_secs(5)).get().await.unwrap_err();
    assert!(
        matches!(gateway_error(&e), GatewayError::Status { status, .. } if status.as_u16() == 503)
            && e.is_retryable()
    );

    sandbox.inject(Gateway::Sipay, Fault::Malformed, 1);
    let e = cache(Duration::from_secs(5)).get().await.unwrap_err();
    assert!(
        matches!(gateway_error(&e), GatewayError::Malformed { .. }),
        "{e}"
    );

    sandbox.inject(Gateway::Sipay, Fault::RejectCredentials, 1);
    let e = cache(Duration::from_secs(5)).get().await.unwrap_err();
    assert!(
        matches!(gateway_error(&e), GatewayError::Refused { .. }) && !e.is_retryable(),
        "{e}"
    );

    sandbox.inject(Gateway::Sipay, Fault::Slow(Duration::from_millis(400)), 1);
    let e = cache(Duration::from_millis(100)).get().await.unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");

    // and then it works again
    assert!(cache(Duration::from_secs(5)).get().await.is_ok());
    assert_eq!(sandbox.stats(Gateway::Sipay).token_requests, 5);
}

#[tokio::test]
async fn wrong_credentials_are_refused_the_documented_way() {
    let sandbox = Sandbox::start().await.unwrap();
    let http = IssuerClient::new().unwrap();
    let bad_torus = tokenwarden_gateways::torus::TorusConfig::new(
        sandbox.base_url(Gateway::Torus),
        "stale",
        "k",
        "s",
    );
    let e = first_error(torus::cache(http.clone(), bad_torus)).await;
    assert!(e.is_rejected(), "{e}");
    let bad_sipay = tokenwarden_gateways::sipay::SipayConfig::new(
        sandbox.base_url(Gateway::Sipay),
        "app",
        "wrong",
    );
    let e = first_error(sipay::cache(http.clone(), bad_sipay)).await;
    assert!(e.chain().contains("Invalid credentials"), "{}", e.chain());
    let bad_boipa = tokenwarden_gateways::boipa::BoipaConfig::new(
        sandbox.base_url(Gateway::Boipa),
        1,
        "wrong",
        "https://x",
    );
    let e = first_error(boipa::cache(
        http,
        bad_boipa,
        ActionRequest::new(Action::Verify),
        0,
    ))
    .await;
    let GatewayError::Refused {
        codes, reference, ..
    } = gateway_error(&e)
    else {
        panic!("{e}")
    };
    assert_eq!(codes[0].code, "password");
    assert!(reference.is_some());
}

#[tokio::test]
async fn revoking_an_authentication_token_rejects_its_session_tokens() {
    let sandbox = Sandbox::start().await.unwrap();
    let sessions = sessions(&sandbox, IssuerClient::new().unwrap());
    let minted = sessions.mint("main").await.unwrap();
    let client = reqwest::Client::new();
    let url = sandbox.api_url(Gateway::Payments, "payments");
    let send = || {
        client
            .post(&url)
            .bearer_auth(minted.secret().expose())
            .header("merchant-account", credentials::PAYMENTS_MERCHANT)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    sandbox.revoke_authentication_token(credentials::PAYMENTS_AUTHENTICATION_TOKEN);
    assert_eq!(send().await.unwrap().status(), 401);
    sessions.revoke("main");
    assert!(sessions.mint("main").await.is_err());
}

#[tokio::test]
async fn several_merchants_each_get_their_own_tokens_and_cannot_use_anothers() {
    let sandbox = Sandbox::start_with(SandboxConfig::default().with_merchants(3))
        .await
        .unwrap();
    assert_eq!(sandbox.merchants(), 3);
    let http = IssuerClient::new().unwrap();
    let client = reqwest::Client::new();
    for index in 0..3 {
        let m = credentials::merchant(index);
        let torus = torus::cache(http.clone(), sandbox.torus_config_for(index))
            .build()
            .unwrap();
        let sipay = sipay::cache(http.clone(), sandbox.sipay_config_for(index))
            .build()
            .unwrap();
        let boipa = boipa::cache(
            http.clone(),
            sandbox.boipa_config_for(index),
            ActionRequest::new(Action::Purchase),
            0,
        )
        .build()
        .unwrap();
        let sessions = SessionTokens::new(
            http.clone(),
            sandbox.base_url(Gateway::Payments),
            m.payments_merchant.clone(),
        )
        .unwrap();
        sessions
            .register(
                "main",
                &Secret::new(m.payments_authentication_token.clone()),
            )
            .unwrap();
        let payments = sessions.cache("main").unwrap();
        for (gateway, cache) in [
            (Gateway::Torus, &torus),
            (Gateway::Sipay, &sipay),
            (Gateway::Boipa, &boipa),
            (Gateway::Payments, &payments),
        ] {
            assert_eq!(
                call(&sandbox, gateway, cache, 2).await,
                [200, 200],
                "{gateway} {index}"
            );
            let stats = sandbox.merchant_stats(gateway, index);
            assert_eq!(stats.api_requests, 2, "{gateway} {index}");
            let expected = if gateway == Gateway::Boipa { 2 } else { 1 };
            assert_eq!(stats.tokens_issued, expected, "{gateway} {index}");
            assert_eq!(stats.token_requests, expected, "{gateway} {index}");
        }
        // The API says whose token it was.
        let token = sipay.get().await.unwrap();
        let answer = client
            .post(sandbox.api_url(Gateway::Sipay, "orders"))
            .bearer_auth(token.token().secret().expose())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["merchant"], index);
        // A session token presented for another merchant is refused.
        let session = payments.get().await.unwrap();
        let other = credentials::merchant((index + 1) % 3);
        let status = client
            .post(sandbox.api_url(Gateway::Payments, "orders"))
            .bearer_auth(session.token().secret().expose())
            .header("merchant-account", &other.payments_merchant)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    // One merchant's credentials with another's secret are refused.
    let (a, b) = (credentials::merchant(1), credentials::merchant(2));
    let mixed = sipay::SipayConfig::new(
        sandbox.base_url(Gateway::Sipay),
        a.sipay_app_id,
        b.sipay_app_secret,
    );
    let error = first_error(sipay::cache(http.clone(), mixed)).await;
    assert!(error.is_rejected(), "{error:?}");
    // A merchant the sandbox does not know is refused.
    let unknown = sandbox.torus_config_for(7);
    let error = first_error(torus::cache(http, unknown)).await;
    assert!(error.is_rejected(), "{error:?}");
    assert_eq!(
        sandbox.merchant_stats(Gateway::Torus, 7),
        Default::default()
    );
}

#[tokio::test]
async fn a_hostile_boipa_timestamp_is_refused_the_documented_way() {
    let sandbox = Sandbox::start().await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/token", sandbox.base_url(Gateway::Boipa));
    let hostile = [
        i128::MIN.to_string(),
        i128::MAX.to_string(),
        i64::MIN.to_string(),
        u64::MAX.to_string(),
        "99999999999999999999999999999999999999999999999999".to_owned(),
        "0".to_owned(),
        "-1".to_owned(),
    ];
    for timestamp in hostile {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("merchantId", &credentials::BOIPA_MERCHANT_ID.to_string())
            .append_pair("password", credentials::BOIPA_PASSWORD)
            .append_pair("action", "TOKENIZE")
            .append_pair("timestamp", &timestamp)
            .append_pair("allowOriginUrl", "https://shop.example")
            .finish();
        let response = client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{timestamp}: the sandbox did not answer: {e}"));
        assert_eq!(response.status(), 200, "{timestamp}");
        let answer: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(answer["result"], "failure", "{timestamp}: {answer}");
        assert_eq!(
            answer["errors"][0]["fieldName"], "timestamp",
            "{timestamp}: {answer}"
        );
    }
    // And it still answers a good one.
    let cache = boipa::cache(
        IssuerClient::new().unwrap(),
        sandbox.boipa_config(),
        ActionRequest::new(Action::Tokenize),
        0,
    )
    .build()
    .unwrap();
    assert!(cache.get().await.is_ok());
}
