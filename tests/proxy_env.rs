//! A process whose environment names an HTTP proxy (as many containers do) still sends
//! plain-`http` token requests to loopback issuers directly, never in clear text to the proxy.
//!
//! Its own test binary: it sets process-wide environment variables.

use tokenwarden::TokenSource;
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::generic::JsonSource;
use tokenwarden_test_support::{Recorder, Reply};

const SECRET: &str = "PROXY-SECRET-11";

#[test]
fn a_loopback_issuer_is_reached_directly_not_through_the_environment_proxy() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (proxy, issuer) = runtime.block_on(async {
        (
            Recorder::start(Reply::json(r#"{"access_token":"from-proxy"}"#)).await,
            Recorder::start(Reply::json(r#"{"access_token":"direct"}"#)).await,
        )
    });
    let proxy_url = proxy.origin("http", "127.0.0.1");
    // SAFETY: set before any other thread of this process reads the environment (the runtime
    // is current-thread and idle; this binary has one test).
    unsafe {
        for name in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::set_var(name, &proxy_url);
        }
        for name in ["NO_PROXY", "no_proxy", "REQUEST_METHOD"] {
            std::env::remove_var(name);
        }
    }
    let source = JsonSource::json(
        IssuerClient::new().unwrap(),
        &format!("{}/token", issuer.origin("http", "127.0.0.1")),
        serde_json::json!({"client_secret": SECRET}),
    )
    .unwrap();
    let token = runtime.block_on(source.fetch()).unwrap();
    assert_eq!(token.secret().expose(), "direct");
    assert_eq!(proxy.requests(), 0, "the credentials went to the proxy");
    assert_eq!(issuer.found(&[("secret", SECRET)]), ["secret"]);
}
