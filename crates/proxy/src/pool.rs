//! Keep-alive HTTP/1.1 connections to upstream targets.
//!
//! Each target has one [`ConnectionPool`], shared by every snapshot that names the same address
//! with the same timeouts, so a config reload keeps its warm connections. A request takes the
//! most recently used idle connection, or opens a new one, and its connection goes back to the
//! pool when the response body has been read to the end. A connection whose response was not
//! read to the end is dropped, which closes it.
//!
//! The pool drives hyper's HTTP/1.1 client connections directly instead of going through
//! hyper-util's legacy `Client`. That client hashes the scheme and authority into a shared pool
//! map twice per request, and it spawns a task per request to wait until the connection is
//! ready again. Here a target's idle connections are a plain stack behind a mutex that is held
//! only to push or pop. The readiness check happens when the body ends, and by then hyper has
//! usually finished with the response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::AttemptBody;

/// Maximum number of idle connections kept per target. A connection released beyond it is closed.
const MAX_IDLE_PER_TARGET: usize = 1024;
/// Idle time after which the kernel starts TCP keep-alive probes on an upstream connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Shortest period of the task that closes expired idle connections.
const MIN_REAP_PERIOD: Duration = Duration::from_millis(100);

/// A failure to get a connection or a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timed out")]
    ConnectTimedOut,
    #[error("connect failed")]
    Connect(#[source] std::io::Error),
    #[error("HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("request failed")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    /// Returns true when no connection to the upstream could be made.
    pub fn is_connect(&self) -> bool {
        !matches!(self, UpstreamError::Request(_))
    }
}

/// The pools of every upstream target, kept across snapshots.
#[derive(Default)]
pub struct ClientPool {
    pools: Mutex<HashMap<PoolKey, Weak<ConnectionPool>>>,
}

/// A target address with the connect and idle timeouts of the services that use it.
type PoolKey = (Arc<str>, Duration, Duration);

impl ClientPool {
    /// Returns the pool for `address` (`host:port`) and these timeouts, creating it when no
    /// live snapshot uses it.
    pub fn pool(
        &self,
        address: &Arc<str>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<ConnectionPool> {
        let mut pools = lock(&self.pools);
        let key = (address.clone(), connect_timeout, idle_timeout);
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            return pool;
        }
        // Forget the pools of targets that no snapshot names any more.
        pools.retain(|_, pool| pool.strong_count() > 0);
        let pool = Arc::new(ConnectionPool::new(
            address.clone(),
            connect_timeout,
            idle_timeout,
        ));
        pools.insert(key, Arc::downgrade(&pool));
        pool
    }
}

/// The keep-alive connections to one upstream target.
pub struct ConnectionPool {
    /// `host:port` to connect to.
    address: Arc<str>,
    /// The address as a socket address when the host is an IP literal, which skips resolution.
    socket_address: Option<SocketAddr>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<IdleConnection>>,
    reaper_started: AtomicBool,
}

struct IdleConnection {
    sender: SendRequest<AttemptBody>,
    since: Instant,
}

impl ConnectionPool {
    fn new(address: Arc<str>, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        ConnectionPool {
            socket_address: address.parse().ok(),
            address,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            reaper_started: AtomicBool::new(false),
        }
    }

    /// Sends `request` on an idle or a new connection and waits for the response headers.
    ///
    /// When an idle connection turns out to be closed before the request was written, which
    /// happens when the upstream closes it at the same moment, the request is sent again on
    /// another connection. A request that was written, even in part, is never sent again.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<AttemptBody>,
    ) -> Result<(Response<Incoming>, PooledConnection), UpstreamError> {
        loop {
            let mut connection = self.checkout().await?;
            match connection.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, connection)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if connection.reused => {
                        tracing::debug!(upstream.addr = %self.address, error = %error.error(), "idle upstream connection closed; sending on another one");
                        request = unsent;
                    }
                    _ => return Err(UpstreamError::Request(error.into_error())),
                },
            }
        }
    }

    /// Returns the most recently used idle connection that is still open, or a new one.
    async fn checkout(self: &Arc<Self>) -> Result<PooledConnection, UpstreamError> {
        loop {
            let Some(idle) = lock(&self.idle).pop() else {
                break;
            };
            // Dropping a sender that is expired or closed closes its connection, if still open.
            if idle.since.elapsed() < self.idle_timeout && idle.sender.is_ready() {
                return Ok(PooledConnection {
                    pool: self.clone(),
                    sender: idle.sender,
                    reused: true,
                });
            }
        }
        self.connect().await
    }

    async fn connect(self: &Arc<Self>) -> Result<PooledConnection, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open_stream())
            .await
            .map_err(|_| UpstreamError::ConnectTimedOut)?
            .map_err(UpstreamError::Connect)?;
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&keepalive)
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(upstream.addr = %address, %error, "upstream connection ended with an error");
            }
        });
        self.start_reaper();
        Ok(PooledConnection {
            pool: self.clone(),
            sender,
            reused: false,
        })
    }

    /// Connects to the address, trying each resolved address in turn for a host name.
    async fn open_stream(&self) -> std::io::Result<TcpStream> {
        if let Some(address) = self.socket_address {
            return TcpStream::connect(address).await;
        }
        let mut last_error = None;
        for address in tokio::net::lookup_host(&*self.address).await? {
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the host name resolved to no address",
            )
        }))
    }

    fn push_idle(&self, sender: SendRequest<AttemptBody>) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Starts the task that closes connections idle for longer than the idle timeout, once per
    /// pool. The task ends when the pool is dropped.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let period = self.idle_timeout.max(MIN_REAP_PERIOD);
        tokio::spawn(async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                interval.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let idle_timeout = pool.idle_timeout;
                lock(&pool.idle).retain(|idle| idle.since.elapsed() < idle_timeout);
            }
        });
    }
}

/// A connection taken from a pool for one request.
pub struct PooledConnection {
    pool: Arc<ConnectionPool>,
    sender: SendRequest<AttemptBody>,
    /// Whether the connection served an earlier request.
    reused: bool,
}

impl PooledConnection {
    /// Puts the connection back into its pool. Call it only once the response body has been
    /// read to the end; drop the connection instead when the body failed or was abandoned.
    pub fn release(self) {
        let PooledConnection { pool, sender, .. } = self;
        if sender.is_ready() {
            pool.push_idle(sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        // hyper has not finished the exchange yet, for example because the request body is
        // still being sent. Wait for that outside the request, when a runtime is there to wait.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut sender = sender;
            if sender.ready().await.is_ok() {
                pool.push_idle(sender);
            }
        });
    }
}

/// Locks `mutex`, ignoring poisoning: every critical section here is a single push, pop or
/// retain, which leaves the data consistent even if a panic interrupted another holder.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
