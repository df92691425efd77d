//! What the cache makes of an issuer's answers, against mockito: configuration refusals are
//! their own kind, an issuer failing with a 5xx is asked again on the short recovery beat, the
//! expiry is the earlier of `expires_in` and the JWT's `exp`, and no configured secret echoed
//! back by an issuer reaches an error, its `Debug` or the cache's status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use mockito::{Server, ServerGuard};
use tokenwarden_core::{CacheState, Clock, Error, Expiry, TokenCache, TokenSource};
use tokenwarden_gateways::boipa::{self, Action, ActionRequest, BoipaConfig};
use tokenwarden_gateways::generic::{ExpiryField, JsonSource};
use tokenwarden_gateways::oauth2::{self, ClientAuth, ClientCredentials};
use tokenwarden_gateways::sipay::{self, SipayConfig};
use tokenwarden_gateways::{GatewayError, IssuerClient};
use tokenwarden_test_support::gateway_error;

fn credentials(server: &ServerGuard, secret: &str) -> ClientCredentials {
    ClientCredentials::new(
        IssuerClient::new().unwrap(),
        &format!("{}/oauth/token", server.url()),
        "app",
        secret,
    )
    .unwrap()
}

/// A token endpoint answering `status` and `body`, any number of times.
async fn answering(server: &mut ServerGuard, status: usize, body: &str) -> mockito::Mock {
    server
        .mock("POST", "/oauth/token")
        .with_status(status)
        .with_body(body)
        .create_async()
        .await
}

// ---- configuration refusals ----------------------------------------------------------------

#[tokio::test]
async fn configuration_refusals_are_neither_rejections_nor_retried() {
    let cases = [
        (
            400,
            r#"{"error":"invalid_scope","error_description":"payments:write is not allowed"}"#,
            ["invalid_scope", "payments:write is not allowed"],
        ),
        (
            400,
            r#"{"error":"invalid_target","error_description":"no such resource here"}"#,
            ["invalid_target", "with_resource"],
        ),
        (
            400,
            r#"{"error":"unsupported_grant_type"}"#,
            ["unsupported_grant_type", "grant type"],
        ),
        (
            200,
            r#"{"access_token":"at-1","token_type":"DPoP","expires_in":60}"#,
            ["DPoP", "Bearer"],
        ),
    ];
    for (status, body, needles) in cases {
        let mut server = Server::new_async().await;
        let _endpoint = answering(&mut server, status, body).await;
        let source = credentials(&server, "s3cr3t").with_resource("https://ledger.example");

        let fetched = source.fetch().await.unwrap_err();
        assert!(fetched.is_configuration(), "{body}: {fetched:?}");
        assert!(!fetched.is_retryable(), "{body}");

        let cache = oauth2::cache(source).build().unwrap();
        let error = cache.get().await.unwrap_err();
        assert!(
            matches!(error, Error::Configuration(_)),
            "{body}: {error:?}"
        );
        assert!(error.is_configuration(), "{body}");
        assert!(!error.is_rejected(), "{body}");
        assert!(!error.is_retryable(), "{body}");
        assert!(
            error
                .to_string()
                .starts_with("the token request was refused as misconfigured: check the scope"),
            "{error}"
        );
        let chain = error.chain();
        for needle in needles {
            assert!(chain.contains(needle), "{body}: {needle} not in {chain}");
        }
        assert!(
            matches!(cache.status().state, CacheState::Misconfigured { .. }),
            "{body}: {:?}",
            cache.status()
        );
        // Asked again at once: held off, not sent.
        let again = cache.get().await.unwrap_err();
        assert!(
            again.is_configuration() && !again.is_rejected(),
            "{again:?}"
        );
    }
}

#[tokio::test]
async fn an_unknown_oauth_code_keeps_the_servers_words() {
    let mut server = Server::new_async().await;
    let _endpoint = answering(
        &mut server,
        400,
        r#"{"error":"policy_violation","error_description":"client app is suspended until review"}"#,
    )
    .await;
    let cache = oauth2::cache(credentials(&server, "s3cr3t"))
        .build()
        .unwrap();
    let error = cache.get().await.unwrap_err();
    let chain = error.chain();
    assert!(chain.contains("policy_violation"), "{chain}");
    assert!(
        chain.contains("client app is suspended until review"),
        "{chain}"
    );
    assert!(
        !error.is_retryable() && !error.is_configuration(),
        "{chain}"
    );
}

#[tokio::test]
async fn bad_credentials_are_still_rejections() {
    let mut server = Server::new_async().await;
    let _endpoint = answering(
        &mut server,
        401,
        r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
    )
    .await;
    let cache = oauth2::cache(credentials(&server, "s3cr3t"))
        .build()
        .unwrap();
    let error = cache.get().await.unwrap_err();
    assert!(
        error.is_rejected() && !error.is_configuration(),
        "{error:?}"
    );
}

// ---- 5xx recovery --------------------------------------------------------------------------

#[tokio::test]
async fn a_5xx_without_retry_after_asks_for_the_recovery_beat() {
    let fast = [
        (503, "", None),
        (500, r#"{"error":"server_error"}"#, None),
        (503, r#"{"error":"temporarily_unavailable"}"#, None),
        (502, "bad gateway", None),
    ];
    let not_fast = [
        (503, "", Some("4")),
        (429, "", None),
        (400, r#"{"error":"invalid_scope"}"#, None),
        (401, r#"{"error":"invalid_client"}"#, None),
    ];
    for (cases, expected) in [(&fast[..], true), (&not_fast[..], false)] {
        for &(status, body, retry_after) in cases {
            let mut server = Server::new_async().await;
            let mut mock = server
                .mock("POST", "/oauth/token")
                .with_status(status)
                .with_body(body);
            if let Some(after) = retry_after {
                mock = mock.with_header("retry-after", after);
            }
            let _endpoint = mock.create_async().await;
            let error = credentials(&server, "s3cr3t").fetch().await.unwrap_err();
            assert_eq!(
                error.is_fast_retry(),
                expected,
                "{status} {body} {retry_after:?}: {error:?}"
            );
        }
    }
}

/// Calls `cache.get()` every 100 ms of `hand`'s clock for ten seconds; the step (in 100 ms)
/// at which a token came, if one did.
async fn first_token_step(cache: &TokenCache, hand: &tokenwarden_core::ManualClock) -> Option<u32> {
    for step in 0..100 {
        if cache.get().await.is_ok() {
            return Some(step);
        }
        // Let a fetch the call started finish before time moves on.
        tokio::time::sleep(Duration::from_millis(5)).await;
        hand.advance(Duration::from_millis(100));
    }
    None
}

#[tokio::test]
async fn an_issuer_answering_503_three_times_is_asked_again_within_a_beat_each_time() {
    let mut server = Server::new_async().await;
    let failing = server
        .mock("POST", "/oauth/token")
        .with_status(503)
        .expect(3)
        .create_async()
        .await;
    let healthy = server
        .mock("POST", "/oauth/token")
        .with_body(r#"{"access_token":"back","expires_in":600}"#)
        .expect(1)
        .create_async()
        .await;
    let (clock, hand) = Clock::manual();
    // A long backoff from the first failure on: only the recovery beat (1 s, jittered between
    // half and all of it) can bring the token sooner.
    let cache = oauth2::cache(credentials(&server, "s3cr3t"))
        .with_clock(clock)
        .with_first_fetch_backoff(Duration::from_secs(10))
        .build()
        .unwrap();
    let step = first_token_step(&cache, &hand)
        .await
        .expect("a token once the issuer was healthy");
    // Three failures, each followed by at most a beat: the fourth request by 3 s.
    assert!(step <= 31, "token at {step}00 ms");
    failing.assert_async().await;
    healthy.assert_async().await;
}

#[tokio::test]
async fn a_503_with_retry_after_still_waits_the_retry_after() {
    let mut server = Server::new_async().await;
    let busy = server
        .mock("POST", "/oauth/token")
        .with_status(503)
        .with_header("retry-after", "4")
        .expect(1)
        .create_async()
        .await;
    let healthy = server
        .mock("POST", "/oauth/token")
        .with_body(r#"{"access_token":"back","expires_in":600}"#)
        .expect(1)
        .create_async()
        .await;
    let (clock, hand) = Clock::manual();
    let cache = oauth2::cache(credentials(&server, "s3cr3t"))
        .with_clock(clock)
        .build()
        .unwrap();
    let step = first_token_step(&cache, &hand).await.expect("a token");
    assert!((40..=42).contains(&step), "token at {step}00 ms");
    busy.assert_async().await;
    healthy.assert_async().await;
}

// ---- expiry --------------------------------------------------------------------------------

fn jwt(claims: &str) -> String {
    let claims = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims);
    format!("eyJhbGciOiJIUzI1NiJ9.{claims}.c2ln")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A host whose clock runs ahead of the issuer's (here by an hour less ten seconds): the JWT's
/// `exp` is past by this host's clock, while `expires_in` says an hour. The token is used for
/// its life as the issuer counts it (`exp - iat`), not refused as already expired.
#[tokio::test]
async fn a_clock_ahead_of_the_issuers_does_not_make_a_jwt_expired_on_arrival() {
    let now = now();
    let (iat, exp) = (now - 3590, now - 10);
    let token = jwt(&format!(r#"{{"iat":{iat},"exp":{exp}}}"#));
    let body = format!(r#"{{"access_token":"{token}","expires_in":3600}}"#);
    let mut server = Server::new_async().await;
    let _endpoint = answering(&mut server, 200, &body).await;
    let token = credentials(&server, "s3cr3t").fetch().await.unwrap();
    assert_eq!(token.expiry(), Expiry::In(Duration::from_secs(3580)));
    // And without `iat`, the stated `expires_in` is trusted over a past `exp`.
    let token = jwt(&format!(r#"{{"exp":{exp}}}"#));
    let body = format!(r#"{{"access_token":"{token}","expires_in":3600}}"#);
    let mut server = Server::new_async().await;
    let _endpoint = answering(&mut server, 200, &body).await;
    let token = credentials(&server, "s3cr3t").fetch().await.unwrap();
    assert_eq!(token.expiry(), Expiry::In(Duration::from_secs(3600)));
}

#[tokio::test]
async fn the_earlier_of_expires_in_and_the_jwt_exp_is_the_expiry() {
    let iat = now();
    // `exp` one second before `iat + expires_in`: the JWT's is the earlier.
    let early = jwt(&format!(r#"{{"iat":{iat},"exp":{}}}"#, iat + 3599));
    // `exp` an hour after `iat + expires_in`: `expires_in` is the earlier.
    let late = jwt(&format!(r#"{{"iat":{iat},"exp":{}}}"#, iat + 7200));
    let cases = [
        (
            format!(r#"{{"access_token":"{early}","expires_in":3600}}"#),
            Expiry::At(UNIX_EPOCH + Duration::from_secs(iat + 3599)),
        ),
        (
            format!(r#"{{"access_token":"{late}","expires_in":3600}}"#),
            Expiry::In(Duration::from_secs(3600)),
        ),
    ];
    for (body, expiry) in cases {
        let mut server = Server::new_async().await;
        let _endpoint = answering(&mut server, 200, &body).await;
        let token = credentials(&server, "s3cr3t").fetch().await.unwrap();
        assert_eq!(token.expiry(), expiry, "oauth2: {body}");
        let generic = JsonSource::form(
            IssuerClient::new().unwrap(),
            &format!("{}/oauth/token", server.url()),
            [("grant_type", "client_credentials")],
        )
        .unwrap()
        .with_expiry(ExpiryField::InSeconds("/expires_in".into()));
        assert_eq!(
            generic.fetch().await.unwrap().expiry(),
            expiry,
            "generic: {body}"
        );
    }
}

#[tokio::test]
async fn expires_in_may_be_any_non_negative_number() {
    let cases = [
        ("3600.0", Some(Duration::from_secs(3600))),
        ("3600.5", Some(Duration::from_millis(3_600_500))),
        ("0.25", Some(Duration::from_millis(250))),
        ("\"90.5\"", Some(Duration::from_millis(90_500))),
        ("1e3", Some(Duration::from_secs(1000))),
        ("-1", None),
        ("-0.5", None),
        ("1e300", None),
        ("\"NaN\"", None),
        ("\"inf\"", None),
    ];
    for (expires_in, expected) in cases {
        let mut server = Server::new_async().await;
        let body = format!(r#"{{"access_token":"opaque","expires_in":{expires_in}}}"#);
        let _endpoint = answering(&mut server, 200, &body).await;
        let fetched = credentials(&server, "s3cr3t").fetch().await;
        match expected {
            Some(lifetime) => assert_eq!(
                fetched.unwrap().expiry(),
                Expiry::In(lifetime),
                "{expires_in}"
            ),
            None => {
                let error = fetched.unwrap_err();
                let gateway = error.get_ref().downcast_ref::<GatewayError>().unwrap();
                assert!(
                    matches!(gateway, GatewayError::Malformed { .. }),
                    "{expires_in}: {gateway:?}"
                );
                assert!(gateway.to_string().contains("expires_in"), "{gateway}");
            }
        }
    }
}

// ---- secrets echoed back -------------------------------------------------------------------

/// Neither the error, its `Debug`, its chain nor the cache's status shows `secret`.
fn assert_hidden(cache: &TokenCache, error: &Error, secret: &str) {
    let texts = [
        error.to_string(),
        format!("{error:?}"),
        error.chain(),
        format!("{:?}", cache.status()),
    ];
    for text in texts {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn a_client_secret_echoed_by_the_token_endpoint_is_redacted() {
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let mut server = Server::new_async().await;
        let _endpoint = answering(
            &mut server,
            401,
            r#"{"error":"invalid_client","error_description":"bad secret s3cr3t-value"}"#,
        )
        .await;
        let source = credentials(&server, "s3cr3t-value").with_client_auth(auth);
        let cache = oauth2::cache(source).build().unwrap();
        let error = cache.get().await.unwrap_err();
        assert_hidden(&cache, &error, "s3cr3t-value");
        // What the server said is still there.
        assert!(
            error.chain().contains("bad secret [redacted]"),
            "{}",
            error.chain()
        );
        assert!(error.is_rejected());
    }

    // In other text built from the answer: a token type, a parameter given to the source.
    let mut server = Server::new_async().await;
    let _endpoint = answering(
        &mut server,
        200,
        r#"{"access_token":"at","token_type":"s3cr3t-value p4ram-value"}"#,
    )
    .await;
    let source = credentials(&server, "s3cr3t-value").with_param("extra", "p4ram-value");
    let cache = oauth2::cache(source).build().unwrap();
    let error = cache.get().await.unwrap_err();
    assert_hidden(&cache, &error, "s3cr3t-value");
    assert_hidden(&cache, &error, "p4ram-value");
}

#[tokio::test]
async fn a_generic_sources_credentials_echoed_back_are_redacted() {
    let mut server = Server::new_async().await;
    let _endpoint = answering(
        &mut server,
        400,
        r#"{"error":"invalid_request","error_description":"got k3y-value and s3cr3t-value for client_credentials"}"#,
    )
    .await;
    let source = JsonSource::json(
        IssuerClient::new().unwrap(),
        &format!("{}/oauth/token", server.url()),
        serde_json::json!({
            "grant_type": "client_credentials",
            "client_secret": "s3cr3t-value",
            "nested": {"api_key": "k3y-value"},
        }),
    )
    .unwrap();
    let cache = TokenCache::builder(source).build().unwrap();
    let error = cache.get().await.unwrap_err();
    assert_hidden(&cache, &error, "s3cr3t-value");
    assert_hidden(&cache, &error, "k3y-value");
    // The grant type is not a secret: it stays, for the reader.
    assert!(
        error.chain().contains("for client_credentials"),
        "{}",
        error.chain()
    );
}

#[tokio::test]
async fn a_password_echoed_in_a_boipa_refusal_is_redacted() {
    let mut server = Server::new_async().await;
    let _endpoint = server
        .mock("POST", "/boipa/token")
        .with_body(
            r#"{"result":"failure","resultId":"r-p4ssw0rd-value","additionalDetails":{},"errors":[{"messageCode":"password p4ssw0rd-value is wrong","fieldName":"p4ssw0rd-value"}],"processingTime":5}"#,
        )
        .create_async()
        .await;
    let config = BoipaConfig::new(
        format!("{}/boipa", server.url()),
        1234567,
        "p4ssw0rd-value",
        "https://shop.example",
    );
    let cache = boipa::cache(
        IssuerClient::new().unwrap(),
        config,
        ActionRequest::new(Action::Tokenize),
        0,
    )
    .build()
    .unwrap();
    let error = cache.get().await.unwrap_err();
    assert_hidden(&cache, &error, "p4ssw0rd-value");
    assert!(
        matches!(gateway_error(&error), GatewayError::Refused { .. }),
        "{error:?}"
    );
    assert!(error.chain().contains("is wrong"), "{}", error.chain());
}

#[tokio::test]
async fn an_app_secret_echoed_in_a_sipay_answer_is_redacted() {
    for body in [
        r#"{"status_code":2,"status_description":"Invalid credentials: app-s3cr3t-value"}"#,
        r#"{"status_code":100,"data":{"token":"opaque","is_3d":1,"expires_at":"app-s3cr3t-value"}}"#,
    ] {
        let mut server = Server::new_async().await;
        let _endpoint = server
            .mock("POST", "/sipay/api/token")
            .with_body(body)
            .create_async()
            .await;
        let config = SipayConfig::new(
            format!("{}/sipay", server.url()),
            "app-id",
            "app-s3cr3t-value",
        );
        let cache = sipay::cache(IssuerClient::new().unwrap(), config)
            .build()
            .unwrap();
        let error = cache.get().await.unwrap_err();
        assert_hidden(&cache, &error, "app-s3cr3t-value");
        assert_ne!(
            gateway_error(&error).status(),
            Some(StatusCode::BAD_GATEWAY)
        );
    }
}
