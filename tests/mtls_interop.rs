//! Mutual-TLS client authentication (RFC 8705, `self_signed_tls_client_auth`) against
//! oidc-provider, an OpenID-certified authorization server installed by
//! `scripts/install-oidc-provider.sh` and started on loopback over https: the token request
//! carries the client id and the client's certificate, no secret; the token is bound to that
//! certificate (introspection shows its `x5t#S256`); another certificate, or none, is a
//! rejection naming `invalid_client`.

use base64::Engine;
use serde_json::{Value, json};
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_gateways::oauth2::{self, ClientCredentials};
use tokenwarden_gateways::{GatewayError, IssuerClient};
use tokenwarden_test_support::{OidcProvider, gateway_error};

/// A self-signed certificate and its key, as PEM.
struct Certified {
    cert: String,
    key: String,
    der: Vec<u8>,
}

fn certified(name: &str) -> Certified {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    Certified {
        cert: certified.cert.pem(),
        key: certified.key_pair.serialize_pem(),
        der: certified.cert.der().to_vec(),
    }
}

/// The client's registration: its certificate (`x5c`) and the public key in it.
fn registration(client: &Certified) -> Value {
    let mut jwk = SigningKey::from_pkcs8_pem(Algorithm::Es256, &client.key)
        .unwrap()
        .public_jwk();
    jwk["x5c"] = json!([base64::engine::general_purpose::STANDARD.encode(&client.der)]);
    json!([{"client_id": "payments-client", "jwk": jwk, "auth": "self_signed_tls_client_auth"}])
}

/// A reqwest client trusting the server's certificate, presenting `identity` if any.
fn builder(server: &Certified, identity: Option<&Certified>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(server.cert.as_bytes()).unwrap()]);
    match identity {
        Some(client) => builder.identity(
            reqwest::Identity::from_pem(format!("{}{}", client.cert, client.key).as_bytes())
                .unwrap(),
        ),
        None => builder,
    }
}

#[tokio::test]
async fn the_certificate_authenticates_the_client_and_binds_its_tokens() {
    let server_cert = certified("127.0.0.1");
    let client = certified("payments-client");
    let server =
        OidcProvider::start_tls(registration(&client), &server_cert.key, &server_cert.cert).await;
    assert!(server.issuer().starts_with("https://"));
    let sender = IssuerClient::from_builder(builder(&server_cert, Some(&client))).unwrap();
    let source =
        ClientCredentials::tls_client_auth(sender, &server.token_url(), "payments-client").unwrap();
    let cache = oauth2::cache(source).build().unwrap();
    let snapshot = cache.get().await.unwrap_or_else(|e| panic!("{e}"));
    let token = snapshot.token().secret().expose().to_owned();
    assert!(!token.is_empty());

    // The token is bound to the certificate the client presented (RFC 8705 §3.1).
    let introspection = builder(&server_cert, Some(&client))
        .build()
        .unwrap()
        .post(format!("{}/token/introspection", server.issuer()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("token", &token)
                .append_pair("client_id", "payments-client")
                .finish(),
        )
        .send()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&introspection.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["active"], true, "{answer}");
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, &client.der));
    assert_eq!(answer["cnf"]["x5t#S256"], thumbprint.as_str(), "{answer}");
}

#[tokio::test]
async fn another_certificate_or_none_is_a_rejection_naming_invalid_client() {
    let server_cert = certified("127.0.0.1");
    let client = certified("payments-client");
    let server =
        OidcProvider::start_tls(registration(&client), &server_cert.key, &server_cert.cert).await;
    let stranger = certified("payments-client");
    for identity in [Some(&stranger), None] {
        let sender = IssuerClient::from_builder(builder(&server_cert, identity)).unwrap();
        let source =
            ClientCredentials::tls_client_auth(sender, &server.token_url(), "payments-client")
                .unwrap();
        let cache = oauth2::cache(source).build().unwrap();
        let error = cache.get().await.unwrap_err();
        assert!(error.is_rejected(), "{error}");
        match gateway_error(&error) {
            GatewayError::OAuth { error: code, .. } => assert_eq!(code, "invalid_client"),
            other => panic!("{other:?}"),
        }
        println!(
            "{}: {error}",
            if identity.is_some() {
                "another certificate"
            } else {
                "no certificate"
            }
        );
    }
}

#[test]
fn a_certificate_is_presented_only_over_https() {
    let error = ClientCredentials::tls_client_auth(
        IssuerClient::new().unwrap(),
        "http://127.0.0.1:8080/token",
        "c",
    )
    .unwrap_err();
    assert!(error.to_string().contains("https"), "{error}");
}
