//! `private_key_jwt` client authentication (RFC 7523) against oidc-provider, an
//! OpenID-certified authorization server installed by `scripts/install-oidc-provider.sh` and
//! started on loopback: tokens for each signing algorithm, found through discovery, through
//! the cache; and the server's refusals (a key it does not know, an expired assertion, a `jti`
//! used twice), each a typed error that says what the server said.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokenwarden_core::{Expiry, TokenSource};
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_gateways::oauth2::{self, ClientCredentials};
use tokenwarden_gateways::{GatewayError, IssuerClient};
use tokenwarden_test_support::{OidcProvider, gateway_error};

fn key(algorithm: Algorithm, file: &str) -> SigningKey {
    let pem = std::fs::read_to_string(format!(
        "{}/crates/tokenwarden-gateways/tests/data/keys/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    SigningKey::from_pkcs8_pem(algorithm, &pem)
        .unwrap()
        .with_key_id(format!("{}-key", algorithm.name()))
}

const KEYS: [(Algorithm, &str); 4] = [
    (Algorithm::Es256, "p256.pem"),
    (Algorithm::EdDsa, "ed25519.pem"),
    (Algorithm::Ps256, "rsa2048.pem"),
    (Algorithm::Rs256, "rsa2048-pkcs1.pem"),
];

#[tokio::test]
async fn each_algorithm_gets_tokens_through_discovery_and_the_cache() {
    let clients: Vec<(String, SigningKey)> = KEYS
        .iter()
        .map(|(algorithm, file)| {
            (
                format!("client-{}", algorithm.name()),
                key(*algorithm, file),
            )
        })
        .collect();
    let registered: Vec<(&str, serde_json::Value)> = clients
        .iter()
        .map(|(id, key)| (id.as_str(), key.public_jwk()))
        .collect();
    let server = OidcProvider::start(&registered).await;
    for (id, key) in &clients {
        let source = ClientCredentials::discover_private_key_jwt(
            IssuerClient::new().unwrap(),
            server.issuer(),
            id.clone(),
            key.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        // Two requests: two assertions, each with its own jti (a reused one is refused).
        for _ in 0..2 {
            let token = source.fetch().await.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert!(!token.secret().expose().is_empty());
            assert_eq!(token.expiry(), Expiry::In(Duration::from_secs(300)), "{id}");
        }
        let cache = oauth2::cache(source).build().unwrap();
        let snapshot = cache.get().await.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(!snapshot.token().secret().expose().is_empty());
        assert_eq!(cache.stats().fetches, 1);
    }
}

#[tokio::test]
async fn the_token_endpoint_as_audience_is_accepted_too() {
    let key = key(Algorithm::Es256, "p256.pem");
    let server = OidcProvider::start(&[("client", key.public_jwk())]).await;
    let source = ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        &server.token_url(),
        "client",
        key,
    )
    .unwrap();
    source.fetch().await.unwrap();
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_a_rejection_naming_invalid_client() {
    let registered = key(Algorithm::Es256, "p256.pem");
    let server = OidcProvider::start(&[("client", registered.public_jwk())]).await;
    let other = key(Algorithm::Es256, "p256-other.pem");
    let source = ClientCredentials::discover_private_key_jwt(
        IssuerClient::new().unwrap(),
        server.issuer(),
        "client",
        other,
    )
    .await
    .unwrap();
    let error = source.fetch().await.unwrap_err();
    assert!(
        !error.is_retryable() && !error.is_configuration(),
        "{error}"
    );
    let cache = oauth2::cache(source).build().unwrap();
    let error = cache.get().await.unwrap_err();
    assert!(error.is_rejected(), "{error}");
    match gateway_error(&error) {
        GatewayError::OAuth { error: code, .. } => assert_eq!(code, "invalid_client"),
        other => panic!("{other:?}"),
    }
}

/// Sends a hand-made assertion to the token endpoint: the answer's status and body.
async fn send(server: &OidcProvider, assertion: &str) -> (http::StatusCode, bytes::Bytes) {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", "client")
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", assertion)
        .finish();
    let response = reqwest::Client::new()
        .post(server.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = http::StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.bytes().await.unwrap())
}

/// Sends a hand-made assertion and reads the answer as the source does: the refusal.
async fn refusal(server: &OidcProvider, assertion: &str) -> GatewayError {
    let (status, body) = send(server, assertion).await;
    let reader = ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        &server.token_url(),
        "client",
        key(Algorithm::Es256, "p256.pem"),
    )
    .unwrap();
    reader.parse(status, &body).unwrap_err()
}

fn signed(claims: serde_json::Value) -> String {
    let pem = std::fs::read_to_string(format!(
        "{}/crates/tokenwarden-gateways/tests/data/keys/p256.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ES256-key".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_expired_assertion_and_a_reused_jti_are_refused_with_the_servers_reason() {
    let key = key(Algorithm::Es256, "p256.pem");
    let server = OidcProvider::start(&[("client", key.public_jwk())]).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |iat: u64, jti: &str| {
        json!({"iss": "client", "sub": "client", "aud": server.issuer(), "jti": jti,
               "iat": iat, "exp": iat + 60})
    };
    // Expired: issued ten minutes ago, for a minute.
    let expired = refusal(&server, &signed(claims(now - 600, "jti-old"))).await;
    let text = expired.to_string();
    assert!(text.contains("invalid_client"), "{text}");
    assert!(!expired.is_retryable(), "{text}");
    println!("expired assertion: {text}");
    // The same jti twice: the first is taken, the second refused.
    let assertion = signed(claims(now, "jti-once"));
    let (first, _) = send(&server, &assertion).await;
    assert!(
        first.is_success(),
        "the first use of the assertion is taken: {first}"
    );
    let reused = refusal(&server, &assertion).await;
    let text = reused.to_string();
    assert!(text.contains("invalid_client"), "{text}");
    println!("reused jti: {text}");
}
