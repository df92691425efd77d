//! OAuth 2.0 client credentials against a real, independently written OAuth 2.0 server:
//! `oauth2-mock-server` (Node.js, RS256 JWTs), started on loopback by each test
//! (`scripts/install-oauth2-server.sh` installs it; the tests run that script themselves when
//! it is missing, and fail saying how to install Node.js when that is missing). Tokens are
//! checked by an API that verifies their signature against the server's JWKS and their expiry
//! with no leeway.
//!
//! Where time matters and no token must be verified by the clock, the cache runs on a manual
//! clock: ten seconds pass in a loop of 100 ms steps, with the real server answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokenwarden_core::{Clock, Error, ManualClock, TokenCache};
use tokenwarden_gateways::oauth2::{self, ClientAuth, ClientCredentials};
use tokenwarden_gateways::{GatewayError, IssuerClient};
use tokenwarden_origin::Scope;
use tokenwarden_test_support::{JwtApi, OAuth2Server, gateway_error, middleware_client, secret};
use tower::{Layer as _, ServiceExt};

fn credentials(server: &OAuth2Server) -> ClientCredentials {
    ClientCredentials::new(
        IssuerClient::new().unwrap(),
        &server.token_url(),
        "app",
        "s3cr3t",
    )
    .unwrap()
}

/// A cache on a manual clock.
fn manual(credentials: ClientCredentials) -> (TokenCache, ManualClock) {
    let (clock, hand) = Clock::manual();
    let cache = oauth2::cache(credentials)
        .with_clock(clock)
        .build()
        .unwrap();
    (cache, hand)
}

/// The claims of `token`, verified against the server's keys (signature, issuer, expiry).
async fn claims(server: &OAuth2Server, token: &str) -> Value {
    let jwks: JwkSet = serde_json::from_value(server.jwks().await).unwrap();
    let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[server.issuer()]);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("a token the server signed")
        .claims
}

/// Calls `cache.get()` every 100 ms of the manual clock for `seconds`; returns the number of
/// token requests the server saw and the first error.
async fn ten_seconds_of_callers(
    server: &OAuth2Server,
    cache: &TokenCache,
    hand: &ManualClock,
) -> (usize, Option<Error>) {
    let mut first = None;
    for _ in 0..100 {
        if let Err(error) = cache.get().await {
            first.get_or_insert(error);
        }
        // Let a probe or a fetch the call started finish before time moves on.
        tokio::time::sleep(Duration::from_millis(2)).await;
        hand.advance(Duration::from_millis(100));
    }
    (server.requests().await.len(), first)
}

#[tokio::test]
async fn both_client_authentication_methods_are_what_the_server_checks() {
    let server = OAuth2Server::start().await;
    // RFC 6749 §2.3.1: id and secret are form-encoded before Basic; a server decodes them.
    server
        .configure(json!({"clients": {"app": "s3cr3t", "svc:1 é": "p@ss:w+rd %"}}))
        .await;
    let basic = ClientCredentials::new(
        IssuerClient::new().unwrap(),
        &server.token_url(),
        "svc:1 é",
        "p@ss:w+rd %",
    )
    .unwrap();
    let token = oauth2::cache(basic).build().unwrap().get().await.unwrap();
    assert_eq!(
        claims(&server, &secret(&token)).await["client_id"],
        "svc:1 é"
    );

    let post = credentials(&server).with_client_auth(ClientAuth::Post);
    oauth2::cache(post).build().unwrap().get().await.unwrap();

    let requests = server.requests().await;
    let seen: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap(),
                r["client_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("basic", "svc:1 é"), ("post", "app")]);
    for request in &requests {
        assert_eq!(request["grant_type"], "client_credentials");
        assert_eq!(request["content_type"], "application/x-www-form-urlencoded");
    }

    // A wrong secret: the server's own `invalid_client`, rejected credentials.
    let wrong = ClientCredentials::new(
        IssuerClient::new().unwrap(),
        &server.token_url(),
        "app",
        "wrong",
    )
    .unwrap();
    let error = oauth2::cache(wrong)
        .build()
        .unwrap()
        .get()
        .await
        .unwrap_err();
    assert!(error.is_rejected(), "{}", error.chain());
    let GatewayError::OAuth {
        error: code,
        status,
        description,
        ..
    } = gateway_error(&error)
    else {
        panic!("{}", error.chain())
    };
    assert_eq!(
        (code.as_str(), status),
        ("invalid_client", &StatusCode::UNAUTHORIZED)
    );
    assert_eq!(description.as_deref(), Some("Client authentication failed"));
    assert!(!error.chain().contains("wrong"));
}

#[tokio::test]
async fn scopes_and_audience_reach_the_tokens_claims() {
    let server = OAuth2Server::start().await;
    let scoped = credentials(&server)
        .with_scopes(["payments:read", "payments:write"])
        .with_audience("https://api.example");
    let token = oauth2::cache(scoped).build().unwrap().get().await.unwrap();
    let claims = claims(&server, &secret(&token)).await;
    assert_eq!(claims["scope"], "payments:read payments:write");
    assert_eq!(claims["aud"], "https://api.example");

    let resource = credentials(&server).with_resource("https://ledger.example");
    let token = oauth2::cache(resource)
        .build()
        .unwrap()
        .get()
        .await
        .unwrap();
    assert_eq!(
        self::claims(&server, &secret(&token)).await["aud"],
        "https://ledger.example"
    );
    let requests = server.requests().await;
    assert_eq!(requests[0]["scope"], "payments:read payments:write");
    assert_eq!(requests[0]["audience"], "https://api.example");
    assert_eq!(requests[1]["resource"], "https://ledger.example");
}

#[tokio::test]
async fn each_standard_error_is_typed_and_the_server_is_not_hammered() {
    enum Kind {
        Rejected,
        Configuration(&'static str),
        Transient,
    }
    let cases = [
        ("invalid_client", 401, Kind::Rejected),
        ("unauthorized_client", 400, Kind::Rejected),
        ("invalid_grant", 400, Kind::Rejected),
        ("invalid_scope", 400, Kind::Configuration("scope")),
        ("invalid_target", 400, Kind::Configuration("with_resource")),
        ("invalid_request", 400, Kind::Configuration("request")),
        (
            "unsupported_grant_type",
            400,
            Kind::Configuration("grant_type"),
        ),
        ("temporarily_unavailable", 503, Kind::Transient),
        ("server_error", 500, Kind::Transient),
    ];
    for (code, status, kind) in cases {
        let server = OAuth2Server::start().await;
        let description = format!("the server says {code}");
        let answer = json!({
            "status": status,
            "body": {"error": code, "error_description": description},
        });
        server.script(vec![answer; 200]).await;
        let (cache, hand) = manual(credentials(&server));
        let (calls, error) = ten_seconds_of_callers(&server, &cache, &hand).await;
        let error = error.expect("every call failed");
        let chain = error.chain();
        assert!(chain.contains(&description), "{code}: {chain}");
        let GatewayError::OAuth { error: got, .. } = gateway_error(&error) else {
            panic!("{code}: {chain}")
        };
        assert_eq!(got, code);
        match kind {
            Kind::Rejected => {
                assert!(error.is_rejected(), "{code}: {chain}");
                assert!(calls <= 2, "{code}: {calls} token requests in 10 s");
            }
            Kind::Configuration(parameter) => {
                assert!(gateway_error(&error).is_configuration(), "{code}");
                assert!(
                    error.is_configuration() && !error.is_rejected(),
                    "{code}: {chain}"
                );
                assert!(
                    error
                        .to_string()
                        .starts_with("the token request was refused as misconfigured"),
                    "{code}: {error}"
                );
                assert!(!error.is_retryable());
                assert!(
                    chain.contains(parameter),
                    "{code}: the message names {parameter}: {chain}"
                );
                assert!(calls <= 2, "{code}: {calls} token requests in 10 s");
            }
            Kind::Transient => {
                assert!(error.is_retryable(), "{code}: {chain}");
                // The server answered with a failure of its own and no Retry-After: asked
                // again on the recovery beat (1 s, jittered between half and all of it) while
                // callers wait, one request at a time.
                assert!(
                    (10..=21).contains(&calls),
                    "{code}: {calls} token requests in 10 s"
                );
            }
        }
    }
}

#[tokio::test]
async fn retry_after_in_seconds_or_as_a_date_is_obeyed() {
    for as_date in [false, true] {
        let server = OAuth2Server::start().await;
        // Seconds: 3. A date 6 s ahead, read to the second when it arrives: 4 to 6 s.
        let (retry_after, earliest, latest) = if as_date {
            (httpdate_in(Duration::from_secs(6)), 40, 62)
        } else {
            ("3".to_owned(), 30, 33)
        };
        server
            .script(vec![json!({
                "status": 503,
                "headers": {"Retry-After": retry_after},
                "body": {"error": "temporarily_unavailable"},
            })])
            .await;
        let (cache, hand) = manual(credentials(&server));
        let mut got_at = None;
        for step in 0..100u32 {
            if cache.get().await.is_ok() {
                got_at = Some(step);
                break;
            }
            // No second request before the hint.
            if step < earliest {
                assert_eq!(
                    server.requests().await.len(),
                    1,
                    "asked again at {step}00 ms"
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            hand.advance(Duration::from_millis(100));
        }
        let got_at = got_at.expect("a token once the hint had passed");
        assert!(
            (earliest..=latest).contains(&got_at),
            "{retry_after}: token at {got_at}00 ms"
        );
        assert_eq!(server.requests().await.len(), 2, "{retry_after}");
    }
}

fn httpdate_in(after: Duration) -> String {
    httpdate::fmt_http_date(SystemTime::now() + after)
}

#[tokio::test]
async fn without_expires_in_the_jwt_exp_sets_the_lifetime_and_a_string_is_read() {
    for (shape, ttl) in [("absent", 120u64), ("string", 90)] {
        let server = OAuth2Server::start().await;
        server
            .configure(json!({"expiresIn": shape, "ttl": ttl}))
            .await;
        let cache = oauth2::cache(credentials(&server)).build().unwrap();
        cache.get().await.unwrap();
        let expires_in = cache.status().expires_in.expect("a token with an expiry");
        // Not the 5-minute default lifetime: the server's own `ttl`.
        assert!(
            expires_in <= Duration::from_secs(ttl) && expires_in > Duration::from_secs(ttl - 5),
            "{shape}: {expires_in:?}"
        );
    }
}

#[tokio::test]
async fn a_token_type_other_than_bearer_is_refused_and_not_hammered() {
    let server = OAuth2Server::start().await;
    server.configure(json!({"tokenType": "DPoP"})).await;
    let (cache, hand) = manual(credentials(&server));
    let (calls, error) = ten_seconds_of_callers(&server, &cache, &hand).await;
    let error = error.unwrap();
    assert!(
        matches!(
            gateway_error(&error),
            GatewayError::UnsupportedTokenType { .. }
        ),
        "{}",
        error.chain()
    );
    assert!(calls <= 2, "{calls} token requests in 10 s");

    // Bearer in any case is Bearer.
    let server = OAuth2Server::start().await;
    server.configure(json!({"tokenType": "bearer"})).await;
    let cache = oauth2::cache(credentials(&server)).build().unwrap();
    let token = cache.get().await.unwrap();
    assert!(
        token.headers().any(|(name, value)| name == "authorization"
            && value.to_str().unwrap().starts_with("Bearer "))
    );
}

#[tokio::test]
async fn a_six_second_token_serves_four_seconds_and_more_of_its_life() {
    let server = OAuth2Server::start().await;
    // `expires_in` 6, the JWT's `exp` a second later: the token's life is `expires_in`'s, 6 s
    // exactly. (With `exp` at `iat + 6`, the earlier of the two would be `exp`, which counts
    // from `iat`, a whole second, already partly gone: 5 to 6 s.)
    server
        .configure(json!({"ttl": 7, "expiresInExtra": -1}))
        .await;
    let (cache, hand) = manual(credentials(&server));
    let first = cache.get().await.unwrap();
    let claims = claims(&server, &secret(&first)).await;
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        7
    );
    hand.advance(Duration::from_millis(4000));
    let later = cache.get().await.unwrap();
    assert_eq!(later.id(), first.id(), "still served 4 s into its 6 s life");
    // Past its usable life (6 s less a quarter for clock skew, less the mandatory margin):
    // a new one.
    hand.advance(Duration::from_millis(200));
    let next = cache.get().await.unwrap();
    assert_ne!(next.id(), first.id());
    assert_eq!(server.requests().await.len(), 2);
}

#[tokio::test]
async fn discovery_finds_the_token_endpoint_in_the_servers_metadata() {
    let server = OAuth2Server::start().await;
    let discovered = ClientCredentials::discover(
        IssuerClient::new().unwrap(),
        server.issuer(),
        "app",
        "s3cr3t",
    )
    .await
    .unwrap();
    let token = oauth2::cache(discovered)
        .build()
        .unwrap()
        .get()
        .await
        .unwrap();
    assert_eq!(claims(&server, &secret(&token)).await["client_id"], "app");
}

#[tokio::test]
async fn after_an_outage_callers_get_a_token_within_two_seconds_of_the_server_coming_back() {
    let server = OAuth2Server::start().await;
    server.stop().await;
    // A long backoff from the first failure on: only the probe can end it early.
    let cache = oauth2::cache(credentials(&server))
        .with_first_fetch_backoff(Duration::from_secs(20))
        .build()
        .unwrap();
    let error = cache.get().await.unwrap_err();
    assert!(
        matches!(gateway_error(&error), GatewayError::Unreachable { .. }),
        "{}",
        error.chain()
    );
    assert!(matches!(cache.get().await, Err(Error::BackingOff { .. })));
    server.restart().await;
    let back = std::time::Instant::now();
    loop {
        if cache.get().await.is_ok() {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "still backing off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next probe within a second (jittered), then a random spread of up to a second.
    assert!(
        back.elapsed() < Duration::from_millis(2500),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(server.requests().await.len(), 1);
    assert_eq!(cache.stats().recoveries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_through_both_layers_with_six_second_tokens_and_a_mass_revocation() {
    let server = OAuth2Server::start().await;
    server.configure(json!({"ttl": 6})).await;
    let api = JwtApi::start(&server).await;
    let cache = oauth2::cache(credentials(&server)).build().unwrap();
    let scope = Scope::origin(&api.origin()).unwrap();
    let hyper = tokenwarden_tower::TokenLayer::new(cache.clone(), scope)
        .cloning_bodies()
        .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let reqwest = middleware_client(cache.clone(), &api.origin());
    let url = api.url("/payments");

    let run = Duration::from_secs(8);
    let start = std::time::Instant::now();
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (hyper, reqwest, url) = (hyper.clone(), reqwest.clone(), url.clone());
        let (failed, sent) = (Arc::clone(&failed), Arc::clone(&sent));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run {
                let status = if task % 2 == 0 {
                    let request = Request::get(&url).body(Empty::new()).unwrap();
                    match hyper.clone().oneshot(request).await {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.into_body().collect().await;
                            status
                        }
                        Err(_) => StatusCode::BAD_GATEWAY,
                    }
                } else {
                    match reqwest.get(&url).send().await {
                        Ok(response) => response.status(),
                        Err(_) => StatusCode::BAD_GATEWAY,
                    }
                };
                sent.fetch_add(1, SeqCst);
                if status != StatusCode::OK {
                    failed.fetch_add(1, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(4500)).await;
    api.revoke_all();
    for task in tasks {
        task.await.unwrap();
    }
    let token_requests = server.requests().await.len();
    let (sent, failed) = (sent.load(SeqCst), failed.load(SeqCst));
    let (accepted, refused) = (api.accepted(), api.refused());
    println!(
        "{sent} requests in {run:?}: {failed} failed at the caller; API accepted {accepted}, \
         refused {refused}; {token_requests} token requests"
    );
    assert!(sent > 500, "{sent} requests");
    assert_eq!(failed, 0, "no 401 reached a caller");
    // A token every ~3.3 s (refreshed ahead at 70-80 % of its 4.5 usable seconds), and one
    // for the revocation.
    assert!(token_requests <= 5, "{token_requests} token requests");
    assert!(refused >= 1, "the revocation was seen");
}

#[tokio::test]
async fn the_servers_own_scope_and_resource_refusals_are_configuration_errors() {
    let server = OAuth2Server::start().await;
    server
        .configure(json!({
            "allowedScopes": ["payments:read"],
            "allowedResources": ["https://ledger.example"],
        }))
        .await;
    let cases = [
        (
            credentials(&server).with_scopes(["payments:read", "payments:refund"]),
            "invalid_scope",
            "payments:refund",
        ),
        (
            credentials(&server).with_resource("https://elsewhere.example"),
            "invalid_target",
            "https://elsewhere.example",
        ),
    ];
    for (source, code, named) in cases {
        let (cache, hand) = manual(source);
        let before = server.requests().await.len();
        let error = cache.get().await.unwrap_err();
        let chain = error.chain();
        assert!(
            error.is_configuration() && !error.is_rejected(),
            "{code}: {chain}"
        );
        assert!(
            matches!(error, Error::Configuration(_)),
            "{code}: {error:?}"
        );
        let GatewayError::OAuth { error: got, .. } = gateway_error(&error) else {
            panic!("{code}: {chain}")
        };
        assert_eq!(got, code);
        assert!(chain.contains(named), "{code}: the server's words: {chain}");
        assert!(
            matches!(
                cache.status().state,
                tokenwarden_core::CacheState::Misconfigured { .. }
            ),
            "{code}: {:?}",
            cache.status()
        );
        // Held off, not hammered: callers for 4 s of the cache's clock cost no request.
        for _ in 0..40 {
            assert!(cache.get().await.unwrap_err().is_configuration());
            hand.advance(Duration::from_millis(100));
        }
        assert_eq!(server.requests().await.len(), before + 1, "{code}");
    }
    // What the server allows works.
    let allowed = credentials(&server)
        .with_scopes(["payments:read"])
        .with_resource("https://ledger.example");
    oauth2::cache(allowed).build().unwrap().get().await.unwrap();
}

#[tokio::test]
async fn a_secret_the_server_echoes_reaches_no_error_log_or_status() {
    let server = OAuth2Server::start().await;
    server.configure(json!({"echoCredentials": true})).await;
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let wrong = ClientCredentials::new(
            IssuerClient::new().unwrap(),
            &server.token_url(),
            "app",
            "wr0ng-s3cr3t-value",
        )
        .unwrap()
        .with_client_auth(auth);
        let cache = oauth2::cache(wrong).build().unwrap();
        let error = cache.get().await.unwrap_err();
        assert!(error.is_rejected(), "{}", error.chain());
        for text in [
            error.to_string(),
            format!("{error:?}"),
            error.chain(),
            format!("{:?}", cache.status()),
        ] {
            assert!(!text.contains("wr0ng-s3cr3t-value"), "{auth:?}: {text}");
        }
        // The server did echo it; what it said around it is kept.
        assert!(
            error
                .chain()
                .contains("Client authentication failed: secret [redacted] is not the one"),
            "{auth:?}: {}",
            error.chain()
        );
    }
}

#[tokio::test]
async fn an_expires_in_longer_than_the_jwt_is_cut_to_its_exp() {
    // `expires_in` 10 minutes past the JWT's `exp`, then 60 s short of it: the earlier wins.
    for (extra, ttl, longest) in [(600i64, 120u64, 120u64), (-60, 180, 120)] {
        let server = OAuth2Server::start().await;
        server
            .configure(json!({"ttl": ttl, "expiresInExtra": extra}))
            .await;
        let cache = oauth2::cache(credentials(&server)).build().unwrap();
        let token = cache.get().await.unwrap();
        let claims = claims(&server, &secret(&token)).await;
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            ttl
        );
        let expires_in = cache.status().expires_in.expect("a token with an expiry");
        assert!(
            expires_in <= Duration::from_secs(longest)
                && expires_in > Duration::from_secs(longest - 5),
            "expires_in = ttl {extra:+}: {expires_in:?}"
        );
    }
}

#[tokio::test]
async fn a_server_failing_with_503s_serves_callers_within_a_beat_of_recovering() {
    let server = OAuth2Server::start().await;
    let failure = json!({"status": 503, "body": {"error": "temporarily_unavailable"}});
    server.script(vec![failure; 3]).await;
    // A long backoff from the first failure on: only the recovery beat brings the token sooner.
    let (clock, hand) = Clock::manual();
    let cache = oauth2::cache(credentials(&server))
        .with_clock(clock)
        .with_first_fetch_backoff(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut got_at = None;
    for step in 0..100u32 {
        if cache.get().await.is_ok() {
            got_at = Some(step);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        hand.advance(Duration::from_millis(100));
    }
    let got_at = got_at.expect("a token once the server answered again");
    // Three failures, each followed by at most a beat.
    assert!(got_at <= 31, "token at {got_at}00 ms");
    assert_eq!(server.requests().await.len(), 4);
}
