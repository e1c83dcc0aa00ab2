//! Change messages through Redis pub/sub.
//!
//! When a cluster has Redis, a node that writes to the store also publishes the new config
//! version on a channel, and every node subscribed to it refreshes at once. This is a second
//! path beside PostgreSQL notifications, so that a revocation reaches every node even while
//! one of the two paths is down. A lost message costs nothing: the periodic version check still
//! finds the change.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, watch};

/// Sent after a reconnect, when messages may have been missed: check the version now.
pub const RESYNC: u64 = 0;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Publishes config versions on a Redis channel.
#[derive(Clone)]
pub struct RedisBus {
    connection: ConnectionManager,
    channel: String,
}

impl RedisBus {
    /// Connects to Redis at `url`; the connection manager reconnects on its own later.
    pub async fn connect(url: &str, channel: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(RedisBus {
            connection,
            channel: channel.to_string(),
        })
    }

    /// Publishes `version`; a failure is logged, since the version check covers a lost message.
    pub async fn publish(&self, version: u64) {
        let mut connection = self.connection.clone();
        let result: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(version)
            .query_async(&mut connection)
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, redis.channel = %self.channel, config.version = version, "cannot publish a change message to Redis");
        }
    }
}

/// Forwards versions published on `channel` to `versions` until `shutdown` turns true.
/// Reconnects with a backoff and sends [`RESYNC`] after each reconnect.
pub async fn subscribe(
    url: String,
    channel: String,
    versions: mpsc::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;

    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        let session = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let connected = tokio::select! {
            connected = session => connected,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match connected {
            Ok(mut pubsub) => {
                if !first {
                    tracing::info!(redis.channel = %channel, "Redis change messages reconnected");
                }
                backoff = MIN_BACKOFF;
                if versions.send(RESYNC).await.is_err() {
                    return;
                }
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    };
                    let Some(message) = message else {
                        tracing::warn!(redis.channel = %channel, "Redis subscription closed; reconnecting");
                        break;
                    };
                    let version = message
                        .get_payload::<String>()
                        .ok()
                        .and_then(|text| text.parse().ok())
                        .unwrap_or(RESYNC);
                    if versions.send(version).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                if first {
                    tracing::warn!(%error, redis.channel = %channel, "cannot subscribe to Redis change messages yet; relying on the version check");
                } else {
                    tracing::debug!(%error, "Redis subscription reconnect failed");
                }
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
