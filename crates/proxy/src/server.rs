//! Listeners and client connections.
//!
//! One accept loop runs per listener. Each connection is served by hyper-util's automatic
//! HTTP/1.1 and HTTP/2 builder; on TLS listeners ALPN offers `h2` and `http/1.1`. A connection
//! closes gracefully after `timeouts.idle` without a new request, and every connection closes
//! gracefully on shutdown: requests in flight finish, then the connection ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_config::{ClientTimeouts, Http2Settings, ListenerConfig, RequestLimits};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::service::{ConnectionInfo, Proxy};
use crate::tls::{ClientCertificate, ListenerTls, TlsError};

/// A listener that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup of listener {address} failed: {source}")]
    Tls {
        address: SocketAddr,
        #[source]
        source: TlsError,
    },
}

/// A bound listener, ready to accept.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    local_addr: SocketAddr,
}

impl Listener {
    /// Binds the address and loads the TLS certificates of `config`.
    pub async fn bind(config: &ListenerConfig) -> Result<Self, ListenError> {
        let tls = match &config.tls {
            Some(tls_config) => Some(Arc::new(ListenerTls::load(tls_config).map_err(
                |source| ListenError::Tls {
                    address: config.address,
                    source,
                },
            )?)),
            None => None,
        };
        let tcp = TcpListener::bind(config.address)
            .await
            .map_err(|source| ListenError::Bind {
                address: config.address,
                source,
            })?;
        let local_addr = tcp.local_addr().map_err(|source| ListenError::Bind {
            address: config.address,
            source,
        })?;
        Ok(Listener {
            tcp,
            tls,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the TLS state of a TLS listener, for reloads.
    pub fn tls(&self) -> Option<Arc<ListenerTls>> {
        self.tls.clone()
    }
}

/// Counts open connections so that shutdown can wait for them.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    open: AtomicUsize,
    closed: Notify,
}

impl ConnectionTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnectionTracker::default())
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct OpenConnection {
    tracker: Arc<ConnectionTracker>,
    proxy: Arc<Proxy>,
}

impl OpenConnection {
    fn new(tracker: Arc<ConnectionTracker>, proxy: Arc<Proxy>) -> Self {
        tracker.open.fetch_add(1, Ordering::AcqRel);
        proxy.metrics.open_connections.inc();
        OpenConnection { tracker, proxy }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.proxy.metrics.open_connections.dec();
        if self.tracker.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.closed.notify_waiters();
        }
    }
}

/// Connection settings shared by all listeners.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub timeouts: ClientTimeouts,
    pub limits: RequestLimits,
    pub http2: Http2Settings,
}

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn run(
    listener: Listener,
    proxy: Arc<Proxy>,
    settings: ConnectionSettings,
    mut shutdown: watch::Receiver<bool>,
    tracker: Arc<ConnectionTracker>,
) {
    let builder = Arc::new(connection_builder(&settings));
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors is the usual cause; back off instead of spinning.
                tracing::error!(listener.addr = %listener.local_addr, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(tracker.clone(), proxy.clone());
        let proxy = proxy.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let settings = settings.clone();
        let tls = listener.tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => {
                    let info = ConnectionInfo {
                        peer,
                        tls: false,
                        client_certificate: None,
                    };
                    serve_connection(
                        stream,
                        info,
                        proxy,
                        builder,
                        shutdown,
                        settings.timeouts.idle,
                    )
                    .await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        settings.timeouts.header_read,
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            // The verifier has checked the chain, so only the end-entity
                            // certificate is kept, for `mtls-auth`.
                            let client_certificate = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|der| {
                                    Arc::new(ClientCertificate::new(der.clone().into_owned()))
                                });
                            let info = ConnectionInfo {
                                peer,
                                tls: true,
                                client_certificate,
                            };
                            serve_connection(
                                stream,
                                info,
                                proxy,
                                builder,
                                shutdown,
                                settings.timeouts.idle,
                            )
                            .await;
                        }
                        Ok(Err(error)) => {
                            proxy.metrics.tls_handshake_failures.inc();
                            tracing::debug!(client.addr = %peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            proxy.metrics.tls_handshake_failures.inc();
                            tracing::debug!(client.addr = %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    tracing::info!(listener.addr = %listener.local_addr, "listener stopped accepting");
}

fn connection_builder(settings: &ConnectionSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper answers a head larger than its buffer with a bare 431 by itself; the buffer is
    // twice the configured limit so that the pipeline usually sees the head first and answers
    // with the JSON error.
    let buffer = (settings.limits.max_header_bytes * 2).max(16 * 1024);
    // NOTE: with a header count limit above 100, hyper 1.13 allocates and fills two arrays of
    // that many entries for every request head it parses. The default `max_headers` of 100
    // gives hyper a limit of 200, and that costs about 5,000 of the 47,000 instructions of a
    // proxied request (callgrind, bench/instructions.sh).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.timeouts.header_read)
        .keep_alive(true)
        .max_buf_size(buffer)
        .max_headers(settings.limits.max_headers * 2);
    // These limits bound what one HTTP/2 connection can cost. h2 sends GOAWAY(ENHANCE_YOUR_CALM)
    // to a client that resets more than `max_pending_accept_reset_streams` streams before they
    // are accepted (rapid reset, CVE-2023-44487), or that provokes more than
    // `max_local_error_reset_streams` stream errors (CVE-2025-8671). A header block across CONTINUATION frames
    // (CVE-2024-27316) is refused past `max_header_list_size`, and h2 (0.4.15 and later) closes
    // the connection once the block grows past four times that size.
    let http2 = &settings.http2;
    let header_list_size = http2
        .max_header_list_size
        .unwrap_or_else(|| u32::try_from(buffer).unwrap_or(u32::MAX));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http2.max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(http2.max_pending_accept_reset_streams))
        .max_local_error_reset_streams(Some(http2.max_local_error_reset_streams))
        .max_header_list_size(header_list_size)
        .max_send_buf_size(http2.max_send_buf_size)
        .keep_alive_interval(http2.keep_alive_interval)
        .keep_alive_timeout(http2.keep_alive_timeout);
    builder
}

async fn serve_connection<I>(
    io: I,
    info: ConnectionInfo,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
    idle: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let origin = Instant::now();
    let last_request = Arc::new(AtomicU64::new(0));
    let info = Arc::new(info);
    let service = {
        let last_request = last_request.clone();
        let info = info.clone();
        service_fn(move |request| {
            let proxy = proxy.clone();
            let info = info.clone();
            last_request.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
            async move { Ok::<_, Infallible>(proxy.handle(&info, request).await) }
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);

    let idle_ms = idle.as_millis() as u64;
    let mut closing = false;
    loop {
        let deadline =
            origin + Duration::from_millis(last_request.load(Ordering::Relaxed) + idle_ms);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(client.addr = %info.peer, %error, "client connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline.into()), if !closing => {
                let since = origin.elapsed().as_millis() as u64 - last_request.load(Ordering::Relaxed);
                if since >= idle_ms {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = shutdown.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
