//! [`RedisStoreBuilder`]: the URL, key, prefix and timeout of a [`RedisStore`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokenwarden_core::store::StoreError;
use tokio::runtime::Handle;

use crate::*;

/// Settings of a [`RedisStore`]. `Debug` does not show the URL (it may hold a password).
pub struct RedisStoreBuilder {
    pub(crate) url: String,
    pub(crate) key: EncryptionKey,
    pub(crate) prefix: String,
    pub(crate) response_timeout: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Prefix of every Redis key and of the notice channel. Default `tokenwarden:`. Replicas
    /// sharing tokens use the same one; other services on the same Redis another.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The connection manager's own timeout for one answer (connecting included). Default
    /// 1 s; a shared cache gives up sooner, after its store timeout.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The store. It connects on first use, and again after trouble, by itself: Redis need
    /// not be up yet. Call it inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the URL cannot be parsed, or no Tokio runtime is
    /// running (the message shows no password).
    pub fn open(self) -> Result<RedisStore, StoreError> {
        if Handle::try_current().is_err() {
            return Err(StoreError::Unavailable(
                "a RedisStore must be opened inside a Tokio runtime".into(),
            ));
        }
        let client = Client::open(self.url.as_str()).map_err(|e| {
            StoreError::Unavailable(format!("the Redis URL is not usable: {:?}", e.kind()))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.response_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError::Unavailable(describe(&e)))?;
        let key = self.key.0;
        let cipher_key = blake3::derive_key("tokenwarden 2026-12 shared token encryption", &key);
        let names = blake3::derive_key("tokenwarden 2026-12 shared token key names", &key);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                conn,
                cipher: XChaCha20Poly1305::new(&cipher_key.into()),
                names,
                channel: format!("{}notices", self.prefix),
                prefix: self.prefix,
                listeners: Arc::default(),
                listener: Mutex::new(None),
                trouble: Arc::default(),
                scripts: Scripts::new(),
            }),
        })
    }
}
