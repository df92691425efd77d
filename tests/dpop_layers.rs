//! DPoP-bound tokens through both layers against an API that verifies every proof
//! (`tokenwarden_test_support::DpopApi`), without an authorization server: what a request
//! whose body cannot be sent twice does when the API asks for its nonce, and what a layer
//! puts on a request outside its scope.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{
    FetchError, LayerPolicy, NotReplayed, Presentation, Replay, Scope, Token, TokenCache,
};
use tokenwarden_gateways::dpop::DpopKey;
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_test_support::DpopApi;
use tower::{Layer as _, ServiceExt};

fn key() -> DpopKey {
    let pem = std::fs::read_to_string(format!(
        "{}/crates/tokenwarden-gateways/tests/data/keys/ed25519.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    DpopKey::new(SigningKey::from_pkcs8_pem(Algorithm::EdDsa, &pem).unwrap())
}

/// A cache of DPoP-bound tokens, counting its fetches.
fn cache(key: &DpopKey) -> (TokenCache, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let cache = TokenCache::builder(move || {
        let n = counted.fetch_add(1, SeqCst) + 1;
        async move {
            Ok::<_, FetchError>(
                Token::new(format!("dpop-token-{n}")).with_expires_in(Duration::from_secs(600)),
            )
        }
    })
    .with_presentation(Presentation::dpop(Arc::new(key.clone())))
    .build()
    .unwrap();
    (cache, fetches)
}

#[tokio::test]
async fn a_body_that_cannot_be_sent_twice_gets_the_challenge_and_the_next_request_the_nonce() {
    let key = key();
    let api = DpopApi::start(key.thumbprint()).await;
    let (cache, fetches) = cache(&key);
    // No body is kept for a replay.
    let policy = LayerPolicy::new(Scope::origin(&api.origin()).unwrap()).with_max_replay_body(0);
    let hyper = tokenwarden::tower::TokenLayer::new(cache.clone(), policy.clone())
        .cloning_bodies()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let reqwest = reqwest_middleware::ClientBuilder::new(
        tokenwarden::reqwest::client_builder().build().unwrap(),
    )
    .with(tokenwarden::reqwest::TokenMiddleware::new(
        cache.clone(),
        policy,
    ))
    .build();
    let url = api.url("/v1/payments");
    let post = || {
        Request::post(&url)
            .body(Full::new(Bytes::from_static(b"{\"amount\":1}")))
            .unwrap()
    };

    // The first request has no nonce yet: the API asks, and the body cannot go again.
    let response = hyper.clone().oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<Replay>(),
        Some(&Replay::NotReplayed(NotReplayed::BodyTooLarge))
    );
    let _ = response.into_body().collect().await;
    // The challenge's nonce was remembered: the next request (through the other layer, which
    // shares the key) carries it, and is taken at once.
    let response = reqwest
        .post(&url)
        .body("{\"amount\":2}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{:?}", api.refusals());
    assert_eq!(response.extensions().get::<Replay>(), None);
    api.rotate_nonce();
    let response = reqwest
        .post(&url)
        .body("{\"amount\":3}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = hyper.clone().oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{:?}", api.refusals());

    assert_eq!(api.nonce_challenges(), 2);
    assert_eq!(api.refused(), 0, "{:?}", api.refusals());
    // A nonce is not about the token: it was kept throughout.
    assert_eq!(fetches.load(SeqCst), 1);
    assert_eq!(cache.stats().invalidations, 0);
}

#[tokio::test]
async fn a_request_outside_the_scope_carries_no_token_and_fetches_none() {
    let key = key();
    let api = DpopApi::start(key.thumbprint()).await;
    let (cache, fetches) = cache(&key);
    let reqwest = tokenwarden_test_support::middleware_client(cache, &api.origin());
    // The API's other port is another origin: the request goes untouched, and is refused.
    let response = reqwest
        .get(api.other_url("/v1/payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.refusals().len(), 1);
    assert!(
        api.refusals()[0].contains("no Authorization"),
        "{:?}",
        api.refusals()
    );
    assert_eq!(fetches.load(SeqCst), 0);
}

#[tokio::test]
async fn a_server_that_asks_for_a_nonce_every_time_gets_each_request_twice_and_no_more() {
    let key = key();
    // Broken: every request is challenged, whatever nonce its proof carries.
    let api = tokenwarden_test_support::LoopbackApi::start(|_| {
        tokenwarden_test_support::Answer::new(401, "")
            .with_header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
            .with_header("dpop-nonce", "always-new")
    })
    .await;
    let (cache, fetches) = cache(&key);
    let hyper =
        tokenwarden::tower::TokenLayer::new(cache.clone(), Scope::origin(&api.origin()).unwrap())
            .cloning_bodies()
            .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let reqwest = tokenwarden_test_support::middleware_client(cache.clone(), &api.origin());
    let url = api.url("/v1/payments");
    let response = hyper
        .clone()
        .oneshot(Request::get(&url).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::WithNonce { .. })
    ));
    let response = reqwest.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::WithNonce { .. })
    ));
    // Two sends per request, the replay with the challenge's nonce; the token kept.
    let received = api.received();
    assert_eq!(received.len(), 4);
    let nonce_of = |i: usize| {
        use base64::Engine;
        let proof = received[i].header("dpop").expect("a proof");
        let claims = proof.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        claims["nonce"].as_str().map(str::to_owned)
    };
    assert_eq!(nonce_of(0), None);
    for replay in [1, 2, 3] {
        assert_eq!(
            nonce_of(replay).as_deref(),
            Some("always-new"),
            "send {replay}"
        );
    }
    assert_eq!(fetches.load(SeqCst), 1);
    assert_eq!(cache.stats().invalidations, 0);
}
