//! The portcullis control plane.
//!
//! The control plane owns the node's configuration file, the store and the current snapshot.
//! At start it syncs the entities declared in the file into the store, then compiles the
//! store's state into a snapshot. Afterwards it rebuilds the snapshot whenever the store's
//! config version moves: at once after a write through this node's admin API, and within one
//! poll interval after a write through any other node. A rebuild that fails (the store is
//! down, or a stored entity no longer compiles) keeps the last good snapshot in service and
//! marks the node degraded until a later rebuild succeeds.

pub mod ai_usage;
pub mod bus;
mod keys;
pub mod rotation;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_config::Config;
use portcullis_policy::api_key::KeyHasher;
use portcullis_proxy::metrics::Metrics;
use portcullis_proxy::policies::PolicyContext;
use portcullis_proxy::pool::ClientPool;
use portcullis_proxy::snapshot::{self, CompileContext, KeyInput, Snapshot, SnapshotHandle};
use portcullis_proxy::targets::TargetRegistry;
use portcullis_proxy::usage::KeyUsage;
use portcullis_store::credentials::CredentialCipher;
use portcullis_store::{Store, StoreError, StoreState};
use tokio::sync::{Mutex, watch};

pub use keys::{declared_key_records, key_hasher};

/// How often recorded key uses are written to the store.
const KEY_USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// A failure of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Ai(#[from] portcullis_ai::SetupError),
}

/// The node's health as reported by `/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Config version of the snapshot in service.
    pub version: u64,
    /// Why the node is degraded, when it is.
    pub degraded: Option<String>,
}

/// The control plane of one node.
pub struct ControlPlane {
    config: ArcSwap<Config>,
    store: Arc<dyn Store>,
    snapshot: Arc<SnapshotHandle>,
    context: CompileContext,
    metrics: Arc<Metrics>,
    health: ArcSwap<Health>,
    served_version: AtomicU64,
    rebuild: Mutex<()>,
    bus: std::sync::OnceLock<bus::RedisBus>,
    /// Serialises key-usage flushes, so the final flush at shutdown waits for one in progress.
    flush: Mutex<()>,
    key_metrics: rotation::KeyMetrics,
    /// Sender of key-rotation events; `None` without `key_rotation.webhook_secret`.
    webhooks: Option<webhook::WebhookSender>,
    /// The cipher of stored provider credentials; `None` without `secrets.master_key`.
    credentials: Option<Arc<CredentialCipher>>,
}

impl ControlPlane {
    /// Syncs the file's entities into the store and builds the first snapshot.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        policy: PolicyContext,
    ) -> Result<Arc<Self>, ControlError> {
        let credentials = match &config.secrets.master_key {
            Some(key) => {
                let bytes = key.bytes().map_err(|message| {
                    ControlError::Config(format!("secrets.master_key: {message}"))
                })?;
                let cipher = CredentialCipher::new(&bytes);
                tracing::info!(
                    master_key.id = cipher.key_id(),
                    "stored provider credentials are encrypted with this node's master key"
                );
                Some(Arc::new(cipher))
            }
            None => None,
        };
        let hasher = key_hasher(&config, store.as_ref()).await?;
        let declared_keys = declared_key_records(&config.entities, &hasher);
        let version = store
            .sync_declared(&config.entities, &declared_keys)
            .await?;
        tracing::info!(
            store.backend = store.backend(),
            config.version = version,
            "synced declared entities into the store"
        );

        let targets = Arc::new(TargetRegistry::new(metrics.clone(), policy.clock.clone()));
        let context = CompileContext {
            policy,
            clients: Arc::new(ClientPool::default()),
            key_usage: Arc::new(KeyUsage::default()),
            hasher,
            targets,
            ai: match &config.ai {
                Some(ai) => Some(Arc::new(portcullis_ai::Gateway::new(ai)?)),
                None => None,
            },
        };
        let state = store.load().await?;
        let first = compile(&config, &state, &context)?;
        install_ai_state(&context, credentials.as_deref(), &state);
        metrics.config_version.set(state.version as i64);
        let key_metrics = rotation::KeyMetrics::default();
        key_metrics.count_expiring(&state.keys, time::OffsetDateTime::now_utc());
        let webhooks = config.key_rotation.webhook_secret.as_ref().map(|secret| {
            webhook::WebhookSender::new(secret.as_bytes(), config.key_rotation.webhook_attempts)
        });
        let control = ControlPlane {
            config: ArcSwap::from_pointee(config),
            store,
            snapshot: Arc::new(SnapshotHandle::new(first)),
            context,
            metrics,
            health: ArcSwap::from_pointee(Health {
                version: state.version,
                degraded: None,
            }),
            served_version: AtomicU64::new(state.version),
            rebuild: Mutex::new(()),
            bus: std::sync::OnceLock::new(),
            flush: Mutex::new(()),
            key_metrics,
            webhooks,
            credentials,
        };
        Ok(Arc::new(control))
    }

    pub fn snapshot(&self) -> Arc<SnapshotHandle> {
        self.snapshot.clone()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Returns the cipher of stored provider credentials, or `None` on a node without
    /// `secrets.master_key`.
    pub fn credential_cipher(&self) -> Option<&CredentialCipher> {
        self.credentials.as_deref()
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.context.hasher
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Returns the key-lifecycle metrics, for registration and for counting admin operations.
    pub fn key_metrics(&self) -> &rotation::KeyMetrics {
        &self.key_metrics
    }

    pub fn health(&self) -> Health {
        Health::clone(&self.health.load())
    }

    /// Sets the Redis bus on which writes through this node are announced.
    pub fn set_bus(&self, bus: bus::RedisBus) {
        let _ = self.bus.set(bus);
    }

    /// Applies a write that this node made to the store: rebuilds the snapshot before
    /// returning, then announces `version` to the other nodes on the Redis bus, if any.
    pub async fn apply_write(&self, version: u64) {
        if let Err(error) = self.refresh().await {
            tracing::error!(%error, config.version = version, "the write is stored but this node could not rebuild its snapshot");
        }
        if let Some(bus) = self.bus.get() {
            bus.publish(version).await;
        }
    }

    /// Rebuilds the snapshot when the store's version differs from the one in service.
    /// Returns true when a new snapshot was swapped in.
    pub async fn refresh(&self) -> Result<bool, ControlError> {
        let _guard = self.rebuild.lock().await;
        let result = self.refresh_locked().await;
        self.record_outcome(&result);
        result
    }

    async fn refresh_locked(&self) -> Result<bool, ControlError> {
        let version = self.store.version().await?;
        if version == self.served_version.load(Ordering::Acquire) {
            return Ok(false);
        }
        let state = self.store.load().await?;
        self.install(&state)?;
        Ok(true)
    }

    fn install(&self, state: &StoreState) -> Result<(), ControlError> {
        let config = self.config.load();
        let snapshot = compile(&config, state, &self.context)?;
        install_ai_state(&self.context, self.credentials.as_deref(), state);
        self.snapshot.store(snapshot);
        self.served_version.store(state.version, Ordering::Release);
        self.metrics.config_version.set(state.version as i64);
        self.key_metrics
            .count_expiring(&state.keys, time::OffsetDateTime::now_utc());
        tracing::info!(
            config.version = state.version,
            "serving a new configuration snapshot"
        );
        Ok(())
    }

    fn record_outcome(&self, result: &Result<bool, ControlError>) {
        let version = self.served_version.load(Ordering::Acquire);
        let degraded = match result {
            Ok(_) => None,
            Err(error) => Some(error.to_string()),
        };
        let previous = self.health.load();
        if previous.degraded != degraded {
            match &degraded {
                Some(reason) => {
                    tracing::error!(reason = %reason, config.version = version, "configuration refresh failed; serving the last good snapshot")
                }
                None if previous.degraded.is_some() => {
                    tracing::info!(config.version = version, "configuration refresh recovered")
                }
                None => {}
            }
        }
        if previous.version != version || previous.degraded != degraded {
            self.health.store(Arc::new(Health { version, degraded }));
        }
    }

    /// Re-reads the configuration file, syncs its entities and rebuilds the snapshot. Node
    /// settings that need a restart (listeners, admin address, store) keep their old values and
    /// are reported in the log.
    pub async fn reload_file(&self) -> Result<u64, ControlError> {
        let current = self.config.load_full();
        let Some(path) = current.source.clone() else {
            return Err(ControlError::Config(
                "the node runs on the embedded default; there is no file to reload".into(),
            ));
        };
        let mut next = portcullis_config::load_file(&path)
            .map_err(|errors| ControlError::Config(errors.to_string()))?;
        if next.store != current.store || next.admin.address != current.admin.address {
            tracing::warn!(
                "the store and admin address change only on restart; keeping the running values"
            );
        }
        let listeners_changed = next.listeners.len() != current.listeners.len()
            || next
                .listeners
                .iter()
                .zip(&current.listeners)
                .any(|(a, b)| a.address != b.address || a.tls.is_some() != b.tls.is_some());
        if listeners_changed {
            tracing::warn!(
                "listener addresses change only on restart; keeping the running listeners"
            );
        }
        let restart_only = [
            ("admin.token", next.admin.token != current.admin.token),
            ("access_log", next.access_log != current.access_log),
            ("log", next.log != current.log),
            ("timeouts", next.timeouts != current.timeouts),
            ("http2", next.http2 != current.http2),
            ("redis", next.redis != current.redis),
            ("ai", next.ai != current.ai),
            ("secrets", next.secrets != current.secrets),
            (
                "version_check_interval",
                next.version_check_interval != current.version_check_interval,
            ),
            (
                "key_rotation.webhook_secret",
                next.key_rotation.webhook_secret != current.key_rotation.webhook_secret,
            ),
            (
                "key_rotation.webhook_attempts",
                next.key_rotation.webhook_attempts != current.key_rotation.webhook_attempts,
            ),
            (
                "key_rotation.check_interval",
                next.key_rotation.check_interval != current.key_rotation.check_interval,
            ),
        ];
        for (key, changed) in restart_only {
            if changed {
                tracing::warn!(
                    key,
                    "this setting changes only on restart; keeping the running value"
                );
            }
        }
        next.store = current.store.clone();
        next.listeners = current.listeners.clone();
        next.admin = current.admin.clone();
        next.access_log = current.access_log.clone();
        next.log = current.log.clone();
        next.timeouts = current.timeouts.clone();
        next.http2 = current.http2.clone();
        next.redis = current.redis.clone();
        next.version_check_interval = current.version_check_interval;
        next.secrets = current.secrets.clone();
        next.key_rotation.webhook_secret = current.key_rotation.webhook_secret.clone();
        next.key_rotation.webhook_attempts = current.key_rotation.webhook_attempts;
        next.key_rotation.check_interval = current.key_rotation.check_interval;
        if next.key_hash_secret != current.key_hash_secret {
            tracing::warn!("key_hash_secret changes only on restart; keeping the running value");
            next.key_hash_secret = current.key_hash_secret.clone();
        }

        let _guard = self.rebuild.lock().await;
        let declared_keys = declared_key_records(&next.entities, &self.context.hasher);
        // Compile the store's state with the file's entities laid over it before writing
        // anything, so a file that does not compile changes neither the store nor the node.
        let mut preview = self.store.load().await?;
        overlay(&mut preview.entities, &next.entities);
        compile(&next, &preview, &self.context)?;

        self.store
            .sync_declared(&next.entities, &declared_keys)
            .await?;
        let state = self.store.load().await?;
        let snapshot = compile(&next, &state, &self.context)?;
        install_ai_state(&self.context, self.credentials.as_deref(), &state);
        self.config.store(Arc::new(next));
        self.snapshot.store(snapshot);
        self.served_version.store(state.version, Ordering::Release);
        self.metrics.config_version.set(state.version as i64);
        self.record_outcome(&Ok(true));
        tracing::info!(config.version = state.version, file = %path.display(), "reloaded the configuration file");
        Ok(state.version)
    }

    /// Spawns the background tasks: the version poll, the key-usage flush and the key-rotation
    /// schedule. They stop when `shutdown` turns true.
    pub fn spawn_background(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.spawn_key_rotation(shutdown.clone());
        let control = self.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let period = control.config.load().version_check_interval;
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                // Errors are recorded in the node's health and logged on change.
                let _ = control.refresh().await;
            }
        });

        let control = self.clone();
        let mut stop = shutdown;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(KEY_USAGE_FLUSH_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = interval.tick() => false,
                    _ = stop.wait_for(|stop| *stop) => true,
                };
                // At shutdown the caller makes the final flush and waits for it, so this task stops
                // without one: a flush here could be cut off when the process exits.
                if stopping {
                    return;
                }
                control.flush_key_usage().await;
            }
        });
    }

    /// Spawns the task that, every `key_rotation.check_interval`, rotates the keys that are due
    /// and updates the expiring-soon gauge, which changes with the clock as well as the store.
    fn spawn_key_rotation(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let control = self.clone();
        tokio::spawn(async move {
            let period = control.config.load().key_rotation.check_interval;
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                let state = match control.store.load().await {
                    Ok(state) => state,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the store for scheduled key rotation; trying again at the next check");
                        continue;
                    }
                };
                control
                    .key_metrics
                    .count_expiring(&state.keys, time::OffsetDateTime::now_utc());
                let rotated = rotation::rotate_due_keys(&control, &state).await;
                if rotated > 0 {
                    tracing::info!(rotated, "scheduled key rotation pass finished");
                }
            }
        });
    }

    /// Refreshes the snapshot whenever `changes` delivers a version other than the one in
    /// service. Change feeds (PostgreSQL notifications, Redis messages) use this to apply a
    /// write made through another node at once instead of at the next version check.
    pub fn spawn_change_listener(
        self: &Arc<Self>,
        mut changes: tokio::sync::mpsc::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let control = self.clone();
        tokio::spawn(async move {
            loop {
                let version = tokio::select! {
                    version = changes.recv() => version,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                let Some(version) = version else { return };
                if version != 0 && version == control.served_version.load(Ordering::Acquire) {
                    continue;
                }
                // Errors are recorded in the node's health and logged on change.
                let _ = control.refresh().await;
            }
        });
    }

    /// Writes the recorded last-use times of API keys to the store.
    pub async fn flush_key_usage(&self) {
        let _guard = self.flush.lock().await;
        let uses = self.context.key_usage.drain();
        if uses.is_empty() {
            return;
        }
        let uses: Vec<(String, i64)> = uses.into_iter().collect();
        if let Err(error) = self.store.record_key_use(&uses).await {
            tracing::warn!(%error, keys = uses.len(), "cannot record API-key last use; dropping this batch");
        }
    }
}

/// Hands the AI gateway the stored prices and the decrypted credentials of a new store state.
/// The gateway swaps both in place, so its connections and key cool-downs stay. A credential
/// that is missing or does not decrypt leaves its key without a value, and the pool logs why.
fn install_ai_state(
    context: &CompileContext,
    cipher: Option<&CredentialCipher>,
    state: &StoreState,
) {
    let Some(gateway) = &context.ai else {
        return;
    };
    gateway.set_stored_prices(&state.ai_prices);
    let lookup = |name: &str| -> Result<portcullis_config::ApiKey, String> {
        let cipher = cipher.ok_or("this node has no `secrets.master_key` to decrypt it")?;
        let record = state
            .credentials
            .iter()
            .find(|record| record.name == name)
            .ok_or_else(|| {
                format!(
                    "credential `{name}` is not in the store; create it with PUT /ai/credentials/{name}"
                )
            })?;
        cipher
            .open(record)
            .map(portcullis_config::ApiKey::new)
            .map_err(|error| error.to_string())
    };
    gateway.set_credentials(&lookup);
}

/// Replaces or adds each declared entity in `stored` by name, as a sync would.
fn overlay(stored: &mut portcullis_config::Entities, declared: &portcullis_config::Entities) {
    fn upsert<T: Clone>(items: &mut Vec<T>, declared: &[T], name: impl Fn(&T) -> &str) {
        for item in declared {
            match items
                .iter_mut()
                .find(|existing| name(existing) == name(item))
            {
                Some(existing) => *existing = item.clone(),
                None => items.push(item.clone()),
            }
        }
    }
    upsert(&mut stored.services, &declared.services, |service| {
        &service.name
    });
    upsert(&mut stored.routes, &declared.routes, |route| &route.name);
    upsert(&mut stored.consumers, &declared.consumers, |consumer| {
        &consumer.name
    });
}

/// Hands the store's AI prices to the AI gateway, which swaps its price table. The gateway
/// lives across snapshots because it owns provider connection pools and key cool-downs.
fn compile(
    config: &Config,
    state: &StoreState,
    context: &CompileContext,
) -> Result<Snapshot, snapshot::SnapshotError> {
    let now = time::OffsetDateTime::now_utc();
    let keys = state
        .keys
        .iter()
        .filter(|key| key.status(now) != portcullis_store::KeyStatus::Revoked)
        .map(|key| KeyInput {
            id: &key.id,
            consumer: &key.consumer,
            hex_digest: &key.hash,
            expires_at: key.expires_at.map(|at| at.unix_timestamp()),
            scopes: &key.scopes,
        });
    snapshot::compile(config, &state.entities, keys, state.version, context)
}

/// Generates a random secret of 48 base64 characters.
pub fn generate_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 36];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
