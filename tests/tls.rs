//! The tower layer on a hyper-util client that speaks TLS (hyper-rustls), against a TLS server
//! on loopback with a certificate made for the test: the token goes on over https, and a 401
//! is replayed over https with a fresh one.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenwarden::{Replay, Scope, TokenCache, TokenSource};
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::generic::JsonSource;
use tokenwarden_test_support::{CountingIssuer, chain};
use tokenwarden_tower::TokenLayer;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tower::{ServiceBuilder, ServiceExt};

/// What the server saw: (authorization header, body) per request.
type Seen = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A TLS server on loopback for `localhost`, answering 401 to `tok-1` and 200 to any other
/// token; returns its port, the certificate to trust and what it saw.
async fn tls_api() -> (u16, CertificateDer<'static>, Seen) {
    tls_server(|token| {
        if token == "Bearer tok-1" {
            (StatusCode::UNAUTHORIZED, "ok")
        } else {
            (StatusCode::OK, "ok")
        }
    })
    .await
}

/// A TLS server on loopback for `localhost`, answering each request by its `Authorization`
/// header; returns its port, the certificate to trust and what it saw.
async fn tls_server(
    answer: impl Fn(&str) -> (StatusCode, &'static str) + Clone + Send + Sync + 'static,
) -> (u16, CertificateDer<'static>, Seen) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log, answer) = (acceptor.clone(), Arc::clone(&log), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (log, answer) = (Arc::clone(&log), answer.clone());
                    async move {
                        let token = request
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push((token.clone(), body));
                        let (status, body) = answer(&token);
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, cert, seen)
}

#[tokio::test]
async fn tokens_go_over_tls_and_a_401_is_replayed_over_tls() {
    let (port, cert, seen) = tls_api().await;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    // The application's client, of its own body type.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);

    let issuer = CountingIssuer::up();
    let cache = TokenCache::new(issuer.source());
    let origin = format!("https://localhost:{port}");
    let client = ServiceBuilder::new()
        .layer(TokenLayer::new(cache, Scope::origin(&origin).unwrap()).cloning_bodies())
        .service(client);

    let request = Request::post(format!("{origin}/v1/orders"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"amount":1999}"#)))
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    let response = client
        .oneshot(
            Request::get(format!("{origin}/v1/orders"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let seen = seen.lock().unwrap().clone();
    let tokens: Vec<_> = seen.iter().map(|(token, _)| token.as_str()).collect();
    assert_eq!(tokens, ["Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]);
    assert_eq!(seen[0].1, seen[1].1, "the replay sent the same body");
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn a_gateway_source_speaks_https_out_of_the_box() {
    let (port, cert, seen) = tls_server(|_| {
        (
            StatusCode::OK,
            r#"{"access_token":"over-tls","expires_in":600}"#,
        )
    })
    .await;
    let url = format!("https://localhost:{port}/token");
    let body = serde_json::json!({"client_secret": "s3cr3t"});
    let source = JsonSource::json(IssuerClient::new().unwrap(), &url, body.clone()).unwrap();
    let error = source.fetch().await.unwrap_err();
    // Its certificate is self-signed, so not trusted: but the client got as far as checking it.
    let text = chain(error.get_ref());
    assert!(!text.contains("scheme is not http"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing sent to an untrusted server"
    );

    // Trusted: the token comes over TLS.
    let trusting = IssuerClient::from_builder(
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_der(&cert).unwrap()]),
    )
    .unwrap();
    let source = JsonSource::json(trusting, &url, body).unwrap();
    let token = source.fetch().await.unwrap();
    assert_eq!(token.secret().expose(), "over-tls");
    assert_eq!(seen.lock().unwrap().len(), 1);
}
