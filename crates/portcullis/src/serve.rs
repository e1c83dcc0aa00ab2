//! `portcullis serve`: start-up, signals and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use portcullis_admin::AdminState;
use portcullis_config::{Config, LogFormat};
use portcullis_control::ControlPlane;
use portcullis_control::ai_usage::UsageWriter;
use portcullis_policy::ai_limits::{MemoryUsage, RedisUsage, UsageStore};
use portcullis_policy::rate_limit::{Counters, MemoryCounters, RedisCounters, RedisSettings};
use portcullis_proxy::access_log::AccessLog;
use portcullis_proxy::ai_usage::UsageQueue;
use portcullis_proxy::metrics::{Metrics, UsageDropLabels};
use portcullis_proxy::policies::ai_limits::AiLimitsContext;
use portcullis_proxy::policies::introspection::IntrospectionRegistry;
use portcullis_proxy::policies::{PolicyContext, SystemClock};
use portcullis_proxy::server::{self, ConnectionSettings, ConnectionTracker, Listener};
use portcullis_proxy::service::Proxy;
use portcullis_proxy::tls::ListenerTls;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::token::{self, TokenSource};

/// How often TLS certificate files are checked for changes.
const CERTIFICATE_POLL_INTERVAL: Duration = Duration::from_secs(2);

pub(crate) fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => portcullis_config::load_file(&path)
            .map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}")),
        None => Ok(portcullis_config::embedded_default()),
    }
}

fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // PostgreSQL notices such as "relation _sqlx_migrations already exists, skipping" arrive at
    // info on every start, and an operator has nothing to do about them.
    let filter = match "sqlx::postgres::notice=warn".parse() {
        Ok(directive) if std::env::var_os("RUST_LOG").is_none() => filter.add_directive(directive),
        _ => filter,
    };
    // Colour codes only help a terminal, and stderr is often a file or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(error) = result {
        eprintln!("warning: logging was already initialised: {error}");
    }
}

pub async fn migrate(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(path)?;
    init_logging(&config);
    let store = portcullis_store::open(&config.store)
        .await
        .context("cannot open the store")?;
    let version = store.version().await?;
    tracing::info!(
        store.backend = store.backend(),
        config.version = version,
        "migrations applied"
    );
    Ok(())
}

pub async fn serve(path: Option<PathBuf>, addresses_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(path)?;
    init_logging(&config);

    let access_log = AccessLog::open(&config.access_log).context("cannot open the access log")?;
    let store = portcullis_store::open(&config.store)
        .await
        .context("cannot open the store")?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let policy = policy_context(&config, &metrics).await?;
    let control = ControlPlane::start(config.clone(), store, metrics.clone(), policy)
        .await
        .context("cannot load the configuration")?;
    control.key_metrics().register(&mut registry);
    let (admin_token, token_source) = token::admin_token(&config)?;

    // Bind every listener before serving any, so a port conflict stops the start cleanly.
    let mut listeners = Vec::new();
    for listener_config in &config.listeners {
        listeners.push(Listener::bind(listener_config).await?);
    }
    let admin_listener = tokio::net::TcpListener::bind(config.admin.address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the admin address {}",
                config.admin.address
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;

    // Without an `ai` section no call is queued, and the writer stays idle.
    let usage_spec = config
        .ai
        .as_ref()
        .map(|ai| ai.usage_report.clone())
        .unwrap_or_default();
    let (usage_queue, usage_events) = UsageQueue::new(
        usage_spec.queue_size,
        metrics
            .ai_usage_dropped
            .get_or_create(&UsageDropLabels {
                reason: "queue_full",
            })
            .clone(),
    );
    let store_errors = metrics
        .ai_usage_dropped
        .get_or_create(&UsageDropLabels {
            reason: "store_error",
        })
        .clone();
    let usage_writer = UsageWriter::spawn(
        control.store().clone(),
        usage_events,
        usage_spec,
        store_errors,
    );
    let proxy = Arc::new(Proxy {
        snapshot: control.snapshot(),
        metrics: metrics.clone(),
        access_log: access_log.clone(),
        ai_usage: Some(Arc::new(usage_queue)),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = ConnectionTracker::new();
    let settings = ConnectionSettings {
        timeouts: config.timeouts.clone(),
        limits: config.limits.clone(),
        http2: config.http2.clone(),
    };

    let mut proxy_addrs: Vec<SocketAddr> = Vec::new();
    let mut tls_listeners: Vec<Arc<ListenerTls>> = Vec::new();
    let mut listener_tasks = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr();
        proxy_addrs.push(addr);
        match listener.tls() {
            Some(tls) => {
                tracing::info!(listener.addr = %addr, tls = true, tls.names = ?tls.names(), tls.client_auth = ?tls.client_auth(), "proxy listener started");
                tls_listeners.push(tls);
            }
            None => tracing::info!(listener.addr = %addr, tls = false, "proxy listener started"),
        }
        listener_tasks.push(tokio::spawn(server::run(
            listener,
            proxy.clone(),
            settings.clone(),
            shutdown_rx.clone(),
            tracker.clone(),
        )));
    }

    let admin_state = Arc::new(AdminState {
        control: control.clone(),
        registry,
        token: admin_token,
        access_log: access_log.clone(),
        metrics: metrics.clone(),
        access_log_dropped_seen: Default::default(),
    });
    let admin_router = portcullis_admin::router(admin_state);
    let mut admin_shutdown = shutdown_rx.clone();
    let admin_header_read = config.timeouts.header_read;
    let admin_task = tokio::spawn(async move {
        serve_admin(
            admin_listener,
            admin_router,
            admin_header_read,
            &mut admin_shutdown,
        )
        .await;
    });

    match &token_source {
        TokenSource::Config => {
            tracing::info!(admin.addr = %admin_addr, "admin API started; token from the config")
        }
        TokenSource::File {
            path,
            created: true,
        } => {
            tracing::warn!(admin.addr = %admin_addr, token.file = %path.display(), "admin API started; generated a new admin token and wrote it to the token file")
        }
        TokenSource::File {
            path,
            created: false,
        } => {
            tracing::info!(admin.addr = %admin_addr, token.file = %path.display(), "admin API started; token from the token file")
        }
    }
    // Only the version is kept, because holding the snapshot would keep its services and target
    // states alive for as long as the process runs.
    let version = control.snapshot().load().version;
    tracing::info!(
        config.source = %config.source.as_ref().map_or("embedded default".to_string(), |path| path.display().to_string()),
        config.version = version,
        store.backend = control.store().backend(),
        routes = ?control.config().entities.routes.iter().map(|route| route.name.as_str()).collect::<Vec<_>>(),
        global_policies = ?config.policies.iter().map(|policy| policy.kind()).collect::<Vec<_>>(),
        access_log = access_log.is_on(),
        "portcullis is ready"
    );

    if let Some(file) = &addresses_file {
        let addresses = serde_json::json!({
            "proxy": proxy_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "admin": admin_addr.to_string(),
        });
        let temporary = file.with_extension("tmp");
        std::fs::write(&temporary, addresses.to_string())
            .and_then(|()| std::fs::rename(&temporary, file))
            .with_context(|| format!("cannot write the addresses file {}", file.display()))?;
    }

    control.spawn_background(shutdown_rx.clone());
    spawn_change_feeds(&config, &control, &shutdown_rx).await;
    spawn_certificate_poll(tls_listeners.clone(), shutdown_rx.clone());

    wait_for_shutdown(&control, &tls_listeners).await;

    // Stop accepting, let open connections finish their requests, then exit.
    tracing::info!(
        connections = tracker.open(),
        grace_s = config.timeouts.shutdown_grace.as_secs(),
        "shutting down: draining connections"
    );
    let _ = shutdown_tx.send(true);
    for task in listener_tasks {
        let _ = task.await;
    }
    if tokio::time::timeout(config.timeouts.shutdown_grace, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.open(),
            "shutdown grace period ended with connections still open"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
    control.flush_key_usage().await;
    usage_writer.stop().await;
    tracing::info!("portcullis stopped");
    Ok(())
}

/// Builds the counters and clock that policies use: in-memory counters always, and Redis
/// counters when the file has a `redis` key. An unreachable Redis does not stop the start.
async fn policy_context(config: &Config, metrics: &Metrics) -> anyhow::Result<PolicyContext> {
    let redis_counters = match &config.redis {
        Some(redis) => {
            let settings = RedisSettings {
                url: redis.url.clone(),
                key_prefix: redis.key_prefix.clone(),
                timeout: redis.timeout,
            };
            let counters = RedisCounters::connect(settings)
                .await
                .context("cannot set up the Redis rate-limit counters")?;
            Some(counters)
        }
        None => None,
    };
    let ai_limits = AiLimitsContext {
        memory: MemoryUsage::new(),
        shared: redis_counters
            .clone()
            .map(|counters| RedisUsage::new(counters) as Arc<dyn UsageStore>),
        metrics: metrics.ai_limits.clone(),
    };
    let shared_counters = redis_counters.map(|counters| counters as Arc<dyn Counters>);
    Ok(PolicyContext {
        counters: MemoryCounters::new(),
        shared_counters,
        clock: Arc::new(SystemClock::default()),
        jwks: Arc::default(),
        introspection: Arc::new(IntrospectionRegistry::new(
            metrics.introspection_calls.clone(),
        )),
        backend_errors: metrics.rate_limit_backend_errors.clone(),
        waf_verdicts: metrics.waf_verdicts.clone(),
        openid_connect: Arc::default(),
        ai_limits,
    })
}

/// Starts the feeds that tell this node about writes made through other nodes: PostgreSQL
/// notifications when the store is PostgreSQL, and Redis messages when Redis is configured.
async fn spawn_change_feeds(
    config: &Config,
    control: &Arc<ControlPlane>,
    shutdown: &watch::Receiver<bool>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let mut feeds = 0;
    if let portcullis_config::StoreConfig::Postgres(url) = &config.store {
        tokio::spawn(portcullis_store::notify::listen(
            url.clone(),
            sender.clone(),
            shutdown.clone(),
        ));
        feeds += 1;
    }
    if let Some(redis) = &config.redis {
        tokio::spawn(connect_change_bus(
            control.clone(),
            redis.url.clone(),
            redis.channel.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(portcullis_control::bus::subscribe(
            redis.url.clone(),
            redis.channel.clone(),
            sender.clone(),
            shutdown.clone(),
        ));
        feeds += 1;
    }
    drop(sender);
    if feeds > 0 {
        control.spawn_change_listener(receiver, shutdown.clone());
    }
}

/// Connects the Redis publisher of change messages in the background, retrying with a backoff
/// until it succeeds or the node shuts down.
///
/// Start-up never waits on Redis: the redis crate's connection manager retries a refused
/// connection for a long time before it returns, and the node must serve and handle signals
/// meanwhile. Until the publisher connects, writes through this node reach the others through
/// PostgreSQL notifications and the version check.
async fn connect_change_bus(
    control: Arc<ControlPlane>,
    url: String,
    channel: String,
    mut shutdown: watch::Receiver<bool>,
) {
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    let mut backoff = Duration::from_millis(500);
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            portcullis_control::bus::RedisBus::connect(&url, &channel),
        );
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => return,
        };
        let error = match outcome {
            Ok(Ok(bus)) => {
                control.set_bus(bus);
                if failures > 0 {
                    tracing::info!(redis.channel = %channel, "connected to Redis for change messages");
                }
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no connection within {} s", ATTEMPT_TIMEOUT.as_secs()),
        };
        // The first failure and then every tenth are logged, so an outage does not flood the log.
        if failures.is_multiple_of(10) {
            tracing::warn!(%error, redis.channel = %channel, attempts = failures + 1, "cannot connect to Redis for change messages; retrying, and other nodes see this node's writes through the version check meanwhile");
        }
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Waits for SIGTERM or SIGINT; reloads the file, the certificates and the client CA bundles on
/// SIGHUP meanwhile.
async fn wait_for_shutdown(control: &Arc<ControlPlane>, tls_listeners: &[Arc<ListenerTls>]) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = terminate.recv() => { tracing::info!(signal = "SIGTERM", "received a stop signal"); return; }
                _ = interrupt.recv() => { tracing::info!(signal = "SIGINT", "received a stop signal"); return; }
                _ = hangup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reloading the configuration file and certificates");
                    if let Err(error) = control.reload_file().await {
                        tracing::error!(%error, "configuration reload failed; the running configuration is unchanged");
                    }
                    for tls in tls_listeners {
                        tls.reload();
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (control, tls_listeners);
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn spawn_certificate_poll(
    tls_listeners: Vec<Arc<ListenerTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    if tls_listeners.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(CERTIFICATE_POLL_INTERVAL);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            for tls in &tls_listeners {
                tls.reload_if_changed();
            }
        }
    });
}

/// Serves the admin API until `shutdown` turns true, then lets open requests finish.
///
/// The admin listener closes a connection whose request head does not arrive within
/// `header_read`, as the proxy listeners do, so that slow clients cannot hold connections open.
async fn serve_admin(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    header_read: Duration,
    shutdown: &mut watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors is the usual cause; retrying at once
                    // would spin.
                    tracing::warn!(%error, "admin listener failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // The borrow that `wait_for` returns is not `Send`, so it is dropped at once.
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, client.addr = %peer, "admin connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
