//! No secret reaches `Debug`, `Display`, errors or `tracing` output.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokenwarden_core::{FetchError, Presentation, Secret, Token, TokenCache};
use tokenwarden_test_support::LogCapture;

const SECRET: &str = "S3CR3T-t0k3n-value";

#[tokio::test(start_paused = true)]
async fn secrets_are_absent_from_debug_display_errors_and_traces() {
    let logs = LogCapture::start();

    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let cache = TokenCache::builder(move || {
        let c = c.clone();
        async move {
            let n = {
                let mut n = c.lock().unwrap();
                *n += 1;
                *n
            };
            match n {
                // an issuer that echoes what it got into its error, as some do, must be
                // redacted by the source: here the source reports only a status
                2 => Err(FetchError::transient("issuer answered 503")),
                3 => Ok(Token::new(format!("{SECRET}\r\nX: y"))),
                _ => Ok(Token::new(SECRET).with_expires_in(Duration::from_secs(60))),
            }
        }
    })
    .with_presentation(
        Presentation::bearer()
            .with_header(HeaderName::from_static("token"))
            .with_fixed_header(
                HeaderName::from_static("merchant-account"),
                HeaderValue::from_static("42"),
            ),
    )
    .with_name("test-gateway")
    .build()
    .unwrap();

    let snapshot = cache.get().await.unwrap();
    let mut seen = vec![
        format!("{snapshot:?}"),
        format!("{:?} {}", snapshot.token(), snapshot.token()),
        format!("{cache:?}"),
        format!("{:?}", snapshot.headers().collect::<Vec<_>>()),
    ];
    cache.invalidate(snapshot.id());
    let err = cache.get().await.unwrap_err(); // 503
    seen.push(format!("{err} {err:?}"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let err = cache.get().await.unwrap_err(); // a token that cannot be a header value
    seen.push(format!("{err} {err:?}"));
    cache.revoke();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cache.get().await.unwrap();
    seen.push(format!("{:?} {}", Secret::new(SECRET), Secret::new(SECRET)));

    let logs = logs.text();
    assert!(logs.contains("token fetched"), "{logs}");
    assert!(logs.contains("token fetch failed"), "{logs}");
    assert!(logs.contains("test-gateway"), "{logs}");
    seen.push(logs);
    for text in seen {
        assert!(!text.contains(SECRET), "secret leaked in: {text}");
    }
    // The values really do carry the secret where they must: on the request.
    assert!(
        snapshot
            .headers()
            .any(|(_, v)| v.as_bytes().ends_with(SECRET.as_bytes()))
    );
}
