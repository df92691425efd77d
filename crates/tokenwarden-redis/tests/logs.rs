//! What a store in trouble logs, captured from this test's thread alone: in a process of its
//! own, so that no other test's store trouble meets the log capture's callsites first.

use std::time::Duration;

use tokenwarden_core::{SharedTokens, TokenCache};
use tokenwarden_redis::{EncryptionKey, RedisStore};
use tokenwarden_test_support::{CountingIssuer, RedisServer};

fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::open(&redis.url(), EncryptionKey::new([7; 32])).unwrap()
}

#[test]
fn a_store_that_refuses_connections_is_named_so_once_per_episode() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let logs = tokenwarden_test_support::LogCapture::start();
    let mut redis = RedisServer::start();
    redis.kill();
    runtime.block_on(async {
        let store = store(&redis);
        let shared = SharedTokens::builder(store)
            .with_store_timeout(Duration::from_millis(50))
            .with_lease_ttl(Duration::from_millis(400))
            .with_pause_after_trouble(Duration::from_millis(100))
            .build();
        let issuer = CountingIssuer::up();
        let cache = TokenCache::builder(issuer.source())
            .with_shared(&shared, "torus:merchant-42")
            .build()
            .unwrap();
        // Let the notice listener try to connect first, as it does at once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..8 {
            cache.get().await.unwrap();
            cache.revoke();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(shared.stats().store_errors >= 4, "{:?}", shared.stats());
    });
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("shared token store"))
        .collect();
    assert_eq!(warnings.len(), 1, "one WARN for the episode: {warnings:#?}");
    assert!(
        warnings[0].to_lowercase().contains("refused"),
        "the WARN names the cause: {}",
        warnings[0]
    );
}
