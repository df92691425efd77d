//! DPoP (RFC 9449) end to end: tokens from oidc-provider (an OpenID-certified authorization
//! server, installed by `scripts/install-oidc-provider.sh`) bound to the client's DPoP key,
//! with the server asking for its nonce; then used through both layers against an API that
//! verifies every proof (`tokenwarden_test_support::DpopApi`: signature, `htm`, `htu`, `ath`,
//! `iat`, a `jti` never seen, its nonce, and the key the token is bound to). The token's
//! `cnf.jkt` is read back from the server's introspection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokenwarden_core::TokenCache;
use tokenwarden_gateways::dpop::DpopKey;
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_gateways::oauth2::{self, ClientCredentials};
use tokenwarden_gateways::{GatewayError, IssuerClient};
use tokenwarden_http::Replay;
use tokenwarden_origin::Scope;
use tokenwarden_test_support::{DpopApi, OidcProvider, gateway_error, middleware_client};
use tower::{Layer as _, ServiceExt};

const CLIENT: &str = "payments-client";

fn pem(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/crates/tokenwarden-gateways/tests/data/keys/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The client's key for its assertions (ES256), and another for DPoP (EdDSA): a token is
/// bound to the second.
fn keys() -> (SigningKey, DpopKey) {
    let client = SigningKey::from_pkcs8_pem(Algorithm::Es256, &pem("p256.pem"))
        .unwrap()
        .with_key_id("client-key");
    let dpop =
        DpopKey::new(SigningKey::from_pkcs8_pem(Algorithm::EdDsa, &pem("ed25519.pem")).unwrap());
    (client, dpop)
}

/// oidc-provider with DPoP on, nonces required, and the client's tokens always DPoP-bound.
async fn server(client: &SigningKey, ttl: u64) -> OidcProvider {
    OidcProvider::start_with(
        json!([{"client_id": CLIENT, "jwk": client.public_jwk(), "dpop_bound_access_tokens": true}]),
        json!({"dpop": true, "require_nonce": true, "ttl": ttl}),
    )
    .await
}

fn source(server: &OidcProvider, client: &SigningKey, dpop: &DpopKey) -> ClientCredentials {
    ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        &server.token_url(),
        CLIENT,
        client.clone(),
    )
    .unwrap()
    .with_dpop(dpop.clone())
}

/// The form parameters of the client's authentication, with an assertion made here (not by
/// the code under test).
fn assertion_form(server: &OidcProvider) -> Vec<(&'static str, String)> {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("client-key".to_owned());
    let claims = json!({
        "iss": CLIENT, "sub": CLIENT, "aud": server.issuer(),
        "jti": format!("introspect-{}", rand_id()), "iat": iat, "exp": iat + 60,
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem("p256.pem").as_bytes()).unwrap();
    let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    vec![
        ("client_id", CLIENT.to_owned()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
        ),
        ("client_assertion", assertion),
    ]
}

/// The server's introspection of `token`.
async fn introspect(server: &OidcProvider, token: &str) -> Value {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .extend_pairs(assertion_form(server))
        .finish();
    let answer = reqwest::Client::new()
        .post(format!("{}/token/introspection", server.issuer()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
}

fn rand_id() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, SeqCst) as u64;
    n ^ SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

type Hyper = tokenwarden_tower::TokenService<
    HyperClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    tokenwarden_tower::CloneBody,
>;

fn hyper(cache: &TokenCache, api: &DpopApi) -> Hyper {
    tokenwarden_tower::TokenLayer::new(cache.clone(), Scope::origin(&api.origin()).unwrap())
        .cloning_bodies()
        .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>())
}

/// A GET through the tower layer: its status and replay marker.
async fn via_hyper(hyper: &Hyper, url: &str) -> (StatusCode, Option<Replay>) {
    let request = Request::get(url).body(Empty::new()).unwrap();
    let response = hyper.clone().oneshot(request).await.unwrap();
    let marker = response.extensions().get::<Replay>().cloned();
    let status = response.status();
    let _ = response.into_body().collect().await;
    (status, marker)
}

async fn via_reqwest(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
) -> (StatusCode, Option<Replay>) {
    let response = client.get(url).send().await.unwrap();
    (
        response.status(),
        response.extensions().get::<Replay>().cloned(),
    )
}

#[tokio::test]
async fn a_bound_token_is_used_through_both_layers_and_nonces_are_answered_without_a_new_token() {
    let (client, dpop) = keys();
    let server = server(&client, 300).await;
    let cache = oauth2::cache(source(&server, &client, &dpop))
        .build()
        .unwrap();

    // The server asks for its nonce first; the source answers with it, once.
    let token = cache.get().await.unwrap();
    assert_eq!(cache.stats().fetches, 1);
    assert!(
        dpop.nonce(&server.token_url()).is_some(),
        "the server's nonce is remembered"
    );
    let introspection = introspect(&server, token.token().secret().expose()).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["token_type"], "DPoP", "{introspection}");
    assert_eq!(
        introspection["cnf"]["jkt"],
        dpop.thumbprint().as_str(),
        "{introspection}"
    );

    let api = DpopApi::start(dpop.thumbprint()).await;
    let hyper = hyper(&cache, &api);
    let reqwest = middleware_client(cache.clone(), &api.origin());
    let url = api.url("/v1/payments?page=2");

    // The API's first answer asks for its nonce: the same token goes again, with it.
    let (status, marker) = via_hyper(&hyper, &url).await;
    assert_eq!(status, StatusCode::OK, "{:?}", api.refusals());
    assert_eq!(marker, Some(Replay::WithNonce { token: token.id() }));
    // The nonce is the key's, shared by both layers: the middleware's proof carries it.
    let (status, marker) = via_reqwest(&reqwest, &url).await;
    assert_eq!((status, marker), (StatusCode::OK, None));
    assert_eq!(api.nonce_challenges(), 1);

    // The API rotates its nonce: each layer is asked once more, and answers without a caller
    // seeing the 401.
    api.rotate_nonce();
    let (status, marker) = via_reqwest(&reqwest, &url).await;
    assert_eq!(
        (status, marker),
        (
            StatusCode::OK,
            Some(Replay::WithNonce { token: token.id() })
        )
    );
    for _ in 0..3 {
        assert_eq!(via_hyper(&hyper, &url).await, (StatusCode::OK, None));
        assert_eq!(via_reqwest(&reqwest, &url).await, (StatusCode::OK, None));
    }
    assert_eq!(api.nonce_challenges(), 2);
    assert_eq!(api.refused(), 0, "{:?}", api.refusals());
    assert_eq!(api.accepted(), 9);
    assert_eq!(api.tokens().len(), 1);
    // No token was fetched for a nonce, and none invalidated.
    assert_eq!(cache.stats().fetches, 1);
    assert_eq!(cache.stats().invalidations, 0);
}

#[tokio::test]
async fn a_proof_of_another_key_is_refused_and_the_token_is_not_refetched_for_it() {
    let (client, dpop) = keys();
    let server = server(&client, 300).await;
    let cache = oauth2::cache(source(&server, &client, &dpop))
        .build()
        .unwrap();
    // The API expects the token to be bound to another key (the client's assertion key).
    let other = DpopKey::new(client.clone());
    let api = DpopApi::start(other.thumbprint()).await;
    let hyper = hyper(&cache, &api);
    let reqwest = middleware_client(cache.clone(), &api.origin());
    let (status, marker) = via_hyper(&hyper, &api.url("/v1/payments")).await;
    // A proof problem is not an expired token: the 401 reaches the caller as it is.
    assert_eq!((status, marker), (StatusCode::UNAUTHORIZED, None));
    let response = reqwest.get(api.url("/v1/payments")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
    assert_eq!(api.refused(), 2);
    let refusals = api.refusals();
    assert!(
        refusals.iter().all(|r| r.contains("is not the token's")),
        "{refusals:?}"
    );
    assert_eq!(cache.stats().fetches, 1);
}

#[tokio::test]
async fn a_proof_for_another_url_is_refused_by_the_server_as_invalid_dpop_proof() {
    let (client, dpop) = keys();
    let server = server(&client, 300).await;
    let source = source(&server, &client, &dpop);
    // A token first: the key now holds the server's nonce.
    let cache = oauth2::cache(source.clone()).build().unwrap();
    cache.get().await.unwrap();
    // A token request whose proof names another URL of the same server.
    let proof = dpop
        .proof("POST", &format!("{}/elsewhere", server.issuer()), None)
        .unwrap();
    let answer = reqwest::Client::new()
        .post(server.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("dpop", proof)
        .body(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .extend_pairs(assertion_form(&server))
                .finish(),
        )
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let error = source
        .parse(status, &answer.bytes().await.unwrap())
        .unwrap_err();
    let GatewayError::OAuth {
        error: code,
        description,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(code, "invalid_dpop_proof");
    assert!(
        description.as_deref().unwrap_or("").contains("htu"),
        "{description:?}"
    );
    assert!(error.to_string().contains("invalid_dpop_proof"), "{error}");
}

#[tokio::test]
async fn a_server_that_issues_bearer_tokens_to_a_dpop_client_is_refused_by_name() {
    let (client, dpop) = keys();
    // DPoP off at the server: it ignores the proof and issues a Bearer token.
    let server = OidcProvider::start_with(
        json!([{"client_id": CLIENT, "jwk": client.public_jwk()}]),
        json!({}),
    )
    .await;
    let cache = oauth2::cache(source(&server, &client, &dpop))
        .build()
        .unwrap();
    let error = cache.get().await.unwrap_err();
    let GatewayError::UnsupportedTokenType {
        token_type,
        expected,
        ..
    } = gateway_error(&error)
    else {
        panic!("{error:?}");
    };
    assert_eq!((token_type.as_str(), *expected), ("Bearer", "DPoP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seconds_through_both_layers_with_six_second_dpop_tokens_and_a_nonce_rotation() {
    let (client, dpop) = keys();
    let server = server(&client, 6).await;
    let cache = oauth2::cache(source(&server, &client, &dpop))
        .build()
        .unwrap();
    let api = DpopApi::start(dpop.thumbprint()).await;
    let hyper = hyper(&cache, &api);
    let reqwest = middleware_client(cache.clone(), &api.origin());
    let url = api.url("/v1/payments");

    let run = Duration::from_secs(20);
    let start = std::time::Instant::now();
    let (failed, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (hyper, reqwest, url) = (hyper.clone(), reqwest.clone(), url.clone());
        let (failed, sent) = (Arc::clone(&failed), Arc::clone(&sent));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < run {
                let (status, _) = if task % 2 == 0 {
                    via_hyper(&hyper, &url).await
                } else {
                    via_reqwest(&reqwest, &url).await
                };
                sent.fetch_add(1, SeqCst);
                if status != StatusCode::OK {
                    failed.fetch_add(1, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Each new token the API takes is introspected while it lives: bound to the key?
    let api = Arc::new(api);
    let server = Arc::new(server);
    let checker = {
        let (api, server) = (Arc::clone(&api), Arc::clone(&server));
        tokio::spawn(async move {
            let mut checked: Vec<(String, Value)> = Vec::new();
            while start.elapsed() < run + Duration::from_millis(500) {
                for token in api.tokens() {
                    if !checked.iter().any(|(t, _)| *t == token) {
                        let introspection = introspect(&server, &token).await;
                        checked.push((token, introspection));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            checked
        })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    api.rotate_nonce();
    for task in tasks {
        task.await.unwrap();
    }
    let checked = checker.await.unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let (sent, failed) = (sent.load(SeqCst), failed.load(SeqCst));
    let proofs = api.accepted() + api.nonce_challenges() + api.refused();
    let fetches = cache.stats().fetches;
    println!(
        "{sent} requests in {elapsed:.1} s: {failed} failed at the caller; the API verified \
         {proofs} proofs ({:.0} proofs/s), accepted {}, asked for its nonce {} times, refused {}; \
         {fetches} tokens fetched",
        proofs as f64 / elapsed,
        api.accepted(),
        api.nonce_challenges(),
        api.refused(),
    );
    assert!(sent > 1_000, "{sent} requests");
    assert_eq!(failed, 0, "no 401 reached a caller: {:?}", api.refusals());
    assert_eq!(api.refused(), 0, "{:?}", api.refusals());
    // As for bearer tokens: a token every ~3.3 s (refreshed ahead in its usable 4.5 s).
    assert!((5..=9).contains(&fetches), "{fetches} tokens fetched");
    assert!(
        api.nonce_challenges() >= 2,
        "the first nonce and the rotation"
    );
    // Every token the API took was bound to the key, as the server says.
    assert_eq!(checked.len(), api.tokens().len());
    for (_, introspection) in &checked {
        assert_eq!(introspection["active"], true, "{introspection}");
        assert_eq!(
            introspection["cnf"]["jkt"],
            dpop.thumbprint().as_str(),
            "{introspection}"
        );
    }
}
