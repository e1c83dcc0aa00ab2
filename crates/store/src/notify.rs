//! Change notifications from PostgreSQL.
//!
//! Every committed write to a [`crate::PostgresStore`] runs `pg_notify` on
//! [`crate::PostgresStore::NOTIFY_CHANNEL`] with the new config version. [`listen`] holds a
//! `LISTEN` connection and forwards each version to the control plane, so that a write through
//! any node reaches every other node in milliseconds. Notifications sent while the connection
//! is down are lost; the control plane's periodic version check covers that gap, and [`listen`]
//! also forwards a [`RESYNC`] marker after each reconnect.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};

use crate::PostgresStore;

/// Sent after a reconnect, when notifications may have been missed: check the version now.
pub const RESYNC: u64 = 0;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Forwards config versions notified by PostgreSQL at `url` to `versions` until `shutdown`
/// turns true or the receiver is dropped. Reconnects with a backoff when the connection fails.
pub async fn listen(url: String, versions: mpsc::Sender<u64>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        let session = async {
            let mut listener = PgListener::connect(&url).await?;
            listener.listen(PostgresStore::NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            connected = session => connected,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match connected {
            Ok(mut listener) => {
                if !first {
                    tracing::info!(
                        channel = PostgresStore::NOTIFY_CHANNEL,
                        "change notifications reconnected"
                    );
                }
                backoff = MIN_BACKOFF;
                if versions.send(RESYNC).await.is_err() {
                    return;
                }
                loop {
                    let notification = tokio::select! {
                        notification = listener.recv() => notification,
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    };
                    match notification {
                        Ok(notification) => {
                            let version = notification.payload().parse::<u64>().unwrap_or(RESYNC);
                            if versions.send(version).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "change notification connection failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                if first {
                    tracing::warn!(%error, "cannot listen for change notifications yet; relying on the version check");
                } else {
                    tracing::debug!(%error, backoff_ms = backoff.as_millis() as u64, "change notification reconnect failed");
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
