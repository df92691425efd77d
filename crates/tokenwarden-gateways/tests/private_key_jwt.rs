//! `private_key_jwt` client authentication (RFC 7523) against mockito: what each token request
//! carries, checked by the public key the server would hold; and what a refusal looks like.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mockito::{Server, ServerGuard};
use serde_json::Value;
use tokenwarden_core::TokenSource;
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_gateways::oauth2::ClientCredentials;

fn key(algorithm: Algorithm, file: &str) -> SigningKey {
    let pem = std::fs::read_to_string(format!(
        "{}/tests/data/keys/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    SigningKey::from_pkcs8_pem(algorithm, &pem)
        .unwrap()
        .with_key_id("client-key-1")
}

/// A token endpoint answering with a token, keeping each request's form and headers.
async fn endpoint(server: &mut ServerGuard) -> Arc<Mutex<Vec<(Vec<(String, String)>, bool)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    server
        .mock("POST", "/oauth/token")
        .with_status(200)
        .with_body_from_request(move |request| {
            let form = form_urlencoded::parse(request.body().unwrap())
                .into_owned()
                .collect();
            let basic = request.header("authorization").iter().any(|_| true);
            kept.lock().unwrap().push((form, basic));
            br#"{"access_token":"at-1","token_type":"Bearer","expires_in":300}"#.to_vec()
        })
        .create_async()
        .await;
    seen
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The assertion's claims, if `key`'s public JWK verifies its signature for `audience`.
fn verified(assertion: &str, key: &SigningKey, audience: &str) -> (jsonwebtoken::Header, Value) {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk()).unwrap();
    let algorithm = jsonwebtoken::decode_header(assertion).unwrap().alg;
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Value>(
        assertion,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap();
    (data.header, data.claims)
}

#[tokio::test]
async fn every_token_request_carries_a_fresh_signed_assertion_and_no_secret() {
    for (algorithm, file) in [
        (Algorithm::Es256, "p256.pem"),
        (Algorithm::EdDsa, "ed25519.pem"),
        (Algorithm::Ps256, "rsa2048.pem"),
        (Algorithm::Rs256, "rsa2048.pem"),
    ] {
        let mut server = Server::new_async().await;
        let seen = endpoint(&mut server).await;
        let token_url = format!("{}/oauth/token", server.url());
        let key = key(algorithm, file);
        let source = ClientCredentials::private_key_jwt(
            IssuerClient::new().unwrap(),
            &token_url,
            "payments-client",
            key.clone(),
        )
        .unwrap()
        .with_scopes(["payments"]);
        assert!(!format!("{source:?}").contains("PRIVATE"));
        for _ in 0..2 {
            let token = source.fetch().await.unwrap();
            assert_eq!(token.secret().expose(), "at-1");
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{algorithm:?}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut ids = Vec::new();
        for (form, basic) in &seen {
            assert!(!basic, "no Authorization header");
            assert_eq!(field(form, "grant_type"), Some("client_credentials"));
            assert_eq!(field(form, "client_id"), Some("payments-client"));
            assert_eq!(field(form, "client_secret"), None);
            assert_eq!(
                field(form, "client_assertion_type"),
                Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            );
            let (header, claims) =
                verified(field(form, "client_assertion").unwrap(), &key, &token_url);
            assert_eq!(header.kid.as_deref(), Some("client-key-1"));
            assert_eq!(claims["iss"], "payments-client");
            assert_eq!(claims["sub"], "payments-client");
            assert_eq!(claims["aud"], token_url.as_str());
            let iat = claims["iat"].as_u64().unwrap();
            // Five seconds back, for a server clock a little behind.
            assert!(
                (4..=8).contains(&now.saturating_sub(iat)),
                "iat {iat}, now {now}"
            );
            assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);
            ids.push(claims["jti"].as_str().unwrap().to_owned());
        }
        assert_ne!(ids[0], ids[1], "a jti is never reused");
        assert!(ids[0].len() >= 22, "128 bits: {}", ids[0]);
    }
}

#[tokio::test]
async fn the_audience_can_be_the_issuer() {
    let mut server = Server::new_async().await;
    let seen = endpoint(&mut server).await;
    let key = key(Algorithm::Es256, "p256.pem");
    let source = ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        &format!("{}/oauth/token", server.url()),
        "payments-client",
        key.clone(),
    )
    .unwrap()
    .with_assertion_audience(server.url());
    source.fetch().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let (_, claims) = verified(
        field(&seen[0].0, "client_assertion").unwrap(),
        &key,
        &server.url(),
    );
    assert_eq!(claims["aud"], server.url());
}

#[tokio::test]
async fn a_refused_assertion_is_a_rejection_that_names_why_and_does_not_repeat_it() {
    let mut server = Server::new_async().await;
    // A server that refuses the assertion and echoes what it was sent.
    server
        .mock("POST", "/oauth/token")
        .with_status(401)
        .with_body_from_request(|request| {
            let form: Vec<(String, String)> = form_urlencoded::parse(request.body().unwrap())
                .into_owned()
                .collect();
            let assertion = field(&form, "client_assertion").unwrap_or_default();
            format!(
                r#"{{"error":"invalid_client","error_description":"jti already used in {assertion}"}}"#
            )
            .into_bytes()
        })
        .create_async()
        .await;
    let source = ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        &format!("{}/oauth/token", server.url()),
        "payments-client",
        key(Algorithm::EdDsa, "ed25519.pem"),
    )
    .unwrap();
    let error = source.fetch().await.unwrap_err();
    assert!(
        !error.is_retryable() && !error.is_configuration(),
        "a rejection: {error}"
    );
    let text = format!("{error} {error:?}");
    assert!(text.contains("invalid_client"), "{text}");
    assert!(text.contains("jti already used"), "{text}");
    // A JWS has two dots; none of the assertion's parts is in the error.
    assert!(!text.contains("eyJ"), "{text}");
}

#[tokio::test]
async fn discovery_takes_the_audience_from_the_metadata_as_written() {
    let mut server = Server::new_async().await;
    let seen = endpoint(&mut server).await;
    // An issuer named with a trailing slash (as Auth0's are), asked for without one.
    let named = format!("{}/", server.url());
    server
        .mock("GET", "/.well-known/oauth-authorization-server")
        .with_body(
            serde_json::json!({
                "issuer": named,
                "token_endpoint": format!("{}/oauth/token", server.url()),
            })
            .to_string(),
        )
        .create_async()
        .await;
    let key = key(Algorithm::Es256, "p256.pem");
    let source = ClientCredentials::discover_private_key_jwt(
        IssuerClient::new().unwrap(),
        &server.url(),
        "payments-client",
        key.clone(),
    )
    .await
    .unwrap();
    source.fetch().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let (_, claims) = verified(field(&seen[0].0, "client_assertion").unwrap(), &key, &named);
    assert_eq!(claims["aud"], named.as_str());
}

#[test]
fn a_key_or_certificate_client_refuses_a_password_in_its_url() {
    let url = "https://user:pw@auth.example.com/oauth/token?x=1";
    let by_key = ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        url,
        "c",
        key(Algorithm::EdDsa, "ed25519.pem"),
    )
    .unwrap_err();
    let by_certificate =
        ClientCredentials::tls_client_auth(IssuerClient::new().unwrap(), url, "c").unwrap_err();
    for error in [by_key, by_certificate] {
        let text = error.to_string();
        assert!(text.contains("user:password@"), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }
    // Debug shows the audience without its query's values.
    let source = ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        "https://auth.example.com/oauth/token?subscription-key=s3cr3t-k3y",
        "c",
        key(Algorithm::EdDsa, "ed25519.pem"),
    )
    .unwrap();
    assert!(!format!("{source:?}").contains("s3cr3t-k3y"), "{source:?}");
}
