//! The notice channel: one listener per store, reconnecting after trouble, and the notices'
//! text.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokenwarden_core::store::{Notice, NoticeKind, Notices, StoreKey};

use crate::*;

/// Reads the notice channel for as long as anyone listens, reconnecting after trouble.
pub(crate) async fn listen(
    client: Client,
    channel: String,
    listeners: Arc<Mutex<Vec<Notices>>>,
    trouble: Arc<Mutex<Option<String>>>,
) {
    let current = || {
        let mut listeners = listeners.lock().unwrap_or_else(PoisonError::into_inner);
        listeners.retain(|l| !l.is_closed());
        listeners.clone()
    };
    let mut pause = Duration::from_millis(50);
    // Runs for as long as the store: it is aborted when the last clone is dropped.
    loop {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(2), connected).await {
            Ok(Ok(mut pubsub)) => {
                pause = Duration::from_millis(50);
                note_trouble(&trouble, None);
                tracing::debug!("listening for shared token notices");
                // Whatever was sent while not listening was missed: waiters look again.
                for l in current() {
                    l.missed();
                }
                let mut messages = pubsub.on_message();
                // A connection silent for a minute may be half open (a failover, a NAT):
                // it is made again, and waiters look again, rather than trusted for ever.
                while let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_secs(60), messages.next()).await
                {
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    if let Some(notice) = parse(&text) {
                        for l in current() {
                            l.deliver(&notice);
                        }
                    }
                }
                tracing::debug!("the shared token notice connection ended; reconnecting");
            }
            Ok(Err(error)) => {
                tracing::debug!(error = %describe(&error), "shared token notices: cannot connect yet");
                note_trouble(&trouble, Some(describe(&error)));
            }
            Err(_) => tracing::debug!("shared token notices: connecting timed out"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

pub(crate) fn parse(text: &str) -> Option<Notice> {
    let mut parts = text.splitn(3, ':');
    let kind = match parts.next()? {
        "i" => NoticeKind::Installed,
        "r" => NoticeKind::Rejected,
        "l" => NoticeKind::Released,
        _ => return None,
    };
    let key = parts.next()?;
    let fence = parts.next()?.parse().ok()?;
    Some(Notice {
        key: StoreKey::new(key),
        fence,
        kind,
    })
}
