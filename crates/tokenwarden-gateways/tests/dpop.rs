//! DPoP token requests (RFC 9449) against mockito: the proof each request carries, checked by
//! the public key in its header; the server's nonce answered once; the token type required.

use std::sync::{Arc, Mutex};

use base64::Engine;
use mockito::{Server, ServerGuard};
use serde_json::Value;
use tokenwarden_core::TokenSource;
use tokenwarden_gateways::dpop::DpopKey;
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_gateways::oauth2::ClientCredentials;
use tokenwarden_gateways::{GatewayError, IssuerClient};

fn dpop() -> DpopKey {
    let pem = std::fs::read_to_string(format!(
        "{}/tests/data/keys/p256.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    DpopKey::new(SigningKey::from_pkcs8_pem(Algorithm::Es256, &pem).unwrap())
}

/// Each request's proof and form, as the endpoint received them.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// The endpoint answers `status` with `body` and `DPoP-Nonce: n-1`.
async fn endpoint(server: &mut ServerGuard, status: usize, body: &'static str) -> Seen {
    let seen = Seen::default();
    let kept = Arc::clone(&seen);
    server
        .mock("POST", "/token")
        .match_query(mockito::Matcher::Any)
        .with_status(status)
        .with_header("dpop-nonce", "n-1")
        .with_body_from_request(move |request| {
            let proof = request
                .header("dpop")
                .first()
                .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
            let form = String::from_utf8(request.body().unwrap().clone()).unwrap();
            kept.lock().unwrap().push((proof, form));
            body.as_bytes().to_vec()
        })
        .create_async()
        .await;
    seen
}

/// The proof's claims, once its signature is verified with the key in its own header, and
/// that key's thumbprint checked against `key`'s.
fn verified(proof: &str, key: &DpopKey) -> Value {
    let header = jsonwebtoken::decode_header(proof).unwrap();
    assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
    let jwk = header.jwk.expect("a jwk in the proof's header");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_exp = false;
    validation.set_required_spec_claims::<&str>(&[]);
    let claims = jsonwebtoken::decode::<Value>(
        proof,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    let public = serde_json::to_value(&jwk).unwrap();
    let canonical = format!(
        r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
        public["crv"].as_str().unwrap(),
        public["x"].as_str().unwrap(),
        public["y"].as_str().unwrap()
    );
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ));
    assert_eq!(thumbprint, key.thumbprint());
    claims
}

fn source(server: &ServerGuard, key: &DpopKey) -> ClientCredentials {
    ClientCredentials::new(
        IssuerClient::new().unwrap(),
        &format!("{}/token?tenant=t1", server.url()),
        "client",
        "s3cr3t",
    )
    .unwrap()
    .with_dpop(key.clone())
}

#[tokio::test]
async fn a_token_request_carries_a_proof_of_the_key_for_the_token_endpoint() {
    let mut server = Server::new_async().await;
    let seen = endpoint(
        &mut server,
        200,
        r#"{"access_token":"at-1","token_type":"DPoP","expires_in":300}"#,
    )
    .await;
    let key = dpop();
    let token = source(&server, &key).fetch().await.unwrap();
    assert_eq!(token.secret().expose(), "at-1");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let claims = verified(&seen[0].0, &key);
    assert_eq!(claims["htm"], "POST");
    // The query is not part of `htu`.
    assert_eq!(claims["htu"], format!("{}/token", server.url()));
    assert!(claims.get("ath").is_none(), "no token yet: {claims}");
    assert!(
        claims.get("nonce").is_none(),
        "no nonce given yet: {claims}"
    );
    // The answer's nonce is remembered for the endpoint's origin.
    assert_eq!(key.nonce(&server.url()).as_deref(), Some("n-1"));
}

#[tokio::test]
async fn a_nonce_asked_for_is_sent_once_with_a_new_proof_and_a_repeated_ask_is_an_error() {
    let mut server = Server::new_async().await;
    let seen = endpoint(
        &mut server,
        400,
        r#"{"error":"use_dpop_nonce","error_description":"nonce is required in the DPoP proof"}"#,
    )
    .await;
    let key = dpop();
    let error = source(&server, &key).fetch().await.unwrap_err();
    let text = tokenwarden_test_support::chain(&error);
    assert!(text.contains("use_dpop_nonce"), "{text}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "asked again once, not more");
    let (first, second) = (verified(&seen[0].0, &key), verified(&seen[1].0, &key));
    assert!(first.get("nonce").is_none());
    assert_eq!(second["nonce"], "n-1");
    assert_ne!(first["jti"], second["jti"]);
}

#[tokio::test]
async fn a_bearer_token_for_a_dpop_request_is_refused_by_name() {
    let mut server = Server::new_async().await;
    endpoint(
        &mut server,
        200,
        r#"{"access_token":"at-1","token_type":"Bearer","expires_in":300}"#,
    )
    .await;
    let error = source(&server, &dpop()).fetch().await.unwrap_err();
    let GatewayError::UnsupportedTokenType {
        token_type,
        expected,
        ..
    } = error
        .get_ref()
        .downcast_ref::<GatewayError>()
        .expect("a gateway error")
    else {
        panic!("{error:?}");
    };
    assert_eq!((token_type.as_str(), *expected), ("Bearer", "DPoP"));
}
