//! The API-key lifecycle beyond the store: issuing and rotating keys with a fresh plaintext,
//! the key metrics, and the scheduled rotation of keys that reach their consumer's age limit.
//!
//! Every node runs the schedule. Nodes that share a store may pick the same key at once, and
//! [`Store::rotate_key`] commits exactly one of those rotations, so only the node that commits
//! sends the webhook.

use std::collections::HashMap;
use std::time::Duration;

use portcullis_config::{Config, ConsumerSpec};
use portcullis_policy::api_key::{
    DISPLAY_PREFIX_LEN, KeyHasher, display_prefix, generate_key, generate_key_id,
};
use portcullis_store::{
    ApiKeyRecord, KeyRotation, KeyStatus, RotatedKey, Store, StoreError, StoreState,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

use crate::ControlPlane;
use crate::webhook::RotationEvent;

/// Keys that expire within this time count in `portcullis_api_keys_expiring_soon`.
const EXPIRING_SOON: time::Duration = time::Duration::days(7);

/// Returns the current time truncated to whole seconds, the precision of issue times.
pub fn issue_time() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Returns the expiry `text` (a duration such as `30d`) after `now`, or a message for the
/// caller that names the value.
pub fn expiry_after(now: OffsetDateTime, text: &str) -> Result<OffsetDateTime, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|error| format!("invalid `expires_in` `{text}`: {error}; write it like `30d`"))?;
    time::Duration::try_from(duration)
        .ok()
        .and_then(|duration| now.checked_add(duration))
        .filter(|at| at.year() <= 9999)
        .ok_or_else(|| format!("`expires_in` `{text}` is too far in the future"))
}

/// Checks a prefix to look keys up by. A prefix longer than the stored one would reach into
/// the secret part of a key, which the store does not keep and lookups never use.
pub fn check_lookup_prefix(prefix: &str) -> Result<(), String> {
    if prefix.chars().count() > DISPLAY_PREFIX_LEN {
        return Err(format!(
            "`prefix` is longer than {DISPLAY_PREFIX_LEN} characters; only the public prefix of \
             a key can be searched, such as `pcs_4vQe1kZ8`"
        ));
    }
    Ok(())
}

/// Parses a rotation overlap such as `24h`, at most 100 years so that the old key's expiry
/// stays a valid time.
pub fn parse_overlap(text: &str) -> Result<Duration, String> {
    const MAX_OVERLAP: Duration = Duration::from_secs(100 * 365 * 86_400);
    let overlap = humantime::parse_duration(text)
        .map_err(|error| format!("invalid `overlap` `{text}`: {error}; write it like `24h`"))?;
    if overlap > MAX_OVERLAP {
        return Err(format!(
            "`overlap` `{text}` is too long; the maximum is 100 years"
        ));
    }
    Ok(overlap)
}

/// A key with its plaintext, which exists only until it is returned or sent.
pub struct IssuedKey {
    pub plaintext: String,
    pub record: ApiKeyRecord,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("plaintext", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// Generates a key for `consumer` and returns it with its record, which is not stored yet.
pub fn new_key(
    hasher: &KeyHasher,
    consumer: &str,
    created_at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
    scopes: Vec<String>,
) -> IssuedKey {
    let plaintext = generate_key();
    let record = ApiKeyRecord {
        id: generate_key_id(),
        consumer: consumer.to_owned(),
        hash: hasher.digest_hex(&plaintext),
        prefix: display_prefix(&plaintext),
        created_at,
        expires_at,
        revoked_at: None,
        rotated_from: None,
        rotated_to: None,
        scopes,
        source: "admin".into(),
        last_used_at: None,
    };
    IssuedKey { plaintext, record }
}

/// A committed rotation with the new key's plaintext.
#[derive(Debug)]
pub struct Rotation {
    pub plaintext: String,
    pub rotated: RotatedKey,
}

/// Rotates key `id` of `consumer` in the store: issues a successor with a new plaintext and
/// lets the old key work for `overlap` more. See [`Store::rotate_key`] for the errors.
pub async fn rotate_key(
    store: &dyn Store,
    hasher: &KeyHasher,
    consumer: &str,
    id: &str,
    overlap: Duration,
    at: OffsetDateTime,
) -> Result<Rotation, StoreError> {
    let overlap = time::Duration::try_from(overlap)
        .map_err(|_| StoreError::Invalid(format!("overlap {overlap:?} is too long")))?;
    let fresh = new_key(hasher, consumer, at, None, Vec::new());
    let request = KeyRotation {
        consumer: consumer.to_owned(),
        id: id.to_owned(),
        successor_id: fresh.record.id,
        successor_hash: fresh.record.hash,
        successor_prefix: fresh.record.prefix,
        overlap,
        at,
    };
    let rotated = store.rotate_key(&request).await?;
    Ok(Rotation {
        plaintext: fresh.plaintext,
        rotated,
    })
}

/// Labels of the rotation counter. `trigger` is `admin` or `schedule`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub trigger: &'static str,
}

/// Metrics of the key lifecycle. The counters count operations made through this node.
#[derive(Debug, Default, Clone)]
pub struct KeyMetrics {
    pub issued: Counter,
    pub rotated: Family<RotationLabels, Counter>,
    pub revoked: Counter,
    pub expiring_soon: Gauge,
    pub webhook_failures: Counter,
}

impl KeyMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_api_keys_issued",
            "API keys issued through this node, rotations excluded",
            self.issued.clone(),
        );
        registry.register(
            "portcullis_api_keys_rotated",
            "API keys rotated through this node, by trigger (admin or schedule)",
            self.rotated.clone(),
        );
        registry.register(
            "portcullis_api_keys_revoked",
            "API keys revoked through this node's admin API",
            self.revoked.clone(),
        );
        registry.register(
            "portcullis_api_keys_expiring_soon",
            "Active API keys in the store that expire within 7 days",
            self.expiring_soon.clone(),
        );
        registry.register(
            "portcullis_key_rotation_webhook_failures",
            "Key rotation events whose webhook delivery failed after every attempt",
            self.webhook_failures.clone(),
        );
    }

    /// Sets the expiring-soon gauge from the keys of a store state.
    pub fn count_expiring(&self, keys: &[ApiKeyRecord], now: OffsetDateTime) {
        let soon = now + EXPIRING_SOON;
        let count = keys
            .iter()
            .filter(|key| key.status(now) == KeyStatus::Active)
            .filter(|key| key.expires_at.is_some_and(|at| at <= soon))
            .count();
        self.expiring_soon.set(count as i64);
    }
}

/// A consumer's rotation schedule after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub every: Duration,
    pub overlap: Duration,
    pub webhook: Option<String>,
}

/// Returns the consumer's schedule: its own `key_rotation` fields, or else the top-level
/// ones. `None` when neither sets `every`.
pub fn schedule(config: &Config, consumer: &ConsumerSpec) -> Option<Schedule> {
    let global = &config.key_rotation;
    let own = consumer.key_rotation.as_ref();
    let every = own.and_then(|spec| spec.every).or(global.every)?;
    Some(Schedule {
        every,
        overlap: own.and_then(|spec| spec.overlap).unwrap_or(global.overlap),
        webhook: own
            .and_then(|spec| spec.webhook.clone())
            .or_else(|| global.webhook.clone()),
    })
}

/// Returns whether `key` is due for scheduled rotation at `now`: active, issued rather than
/// declared in a file, not rotated yet, and at least `every` old.
pub fn is_due(key: &ApiKeyRecord, every: Duration, now: OffsetDateTime) -> bool {
    let Ok(every) = time::Duration::try_from(every) else {
        return false;
    };
    key.status(now) == KeyStatus::Active
        && key.source != "config"
        && key.rotated_to.is_none()
        && now - key.created_at >= every
}

/// Rotates the keys of `state` that are due, and sends each new key to its webhook. Returns
/// the number of rotations this node committed.
pub(crate) async fn rotate_due_keys(control: &ControlPlane, state: &StoreState) -> usize {
    let config = control.config();
    let config = config.as_ref();
    let store = control.store.as_ref();
    let hasher = &control.context.hasher;
    let webhooks = control.webhooks.as_ref();
    let metrics = &control.key_metrics;
    let now = issue_time();
    let schedules: HashMap<&str, Schedule> = state
        .entities
        .consumers
        .iter()
        .filter_map(|consumer| {
            schedule(config, consumer).map(|schedule| (consumer.name.as_str(), schedule))
        })
        .collect();
    let mut rotated = 0;
    let mut undeliverable: Vec<&str> = Vec::new();
    for key in &state.keys {
        let Some(schedule) = schedules.get(key.consumer.as_str()) else {
            continue;
        };
        if !is_due(key, schedule.every, now) {
            continue;
        }
        let (Some(url), Some(sender)) = (schedule.webhook.as_deref(), webhooks) else {
            // Without a webhook the new plaintext could not be delivered, so the key stays as it is.
            undeliverable.push(&key.id);
            continue;
        };
        let rotation = match rotate_key(
            store,
            hasher,
            &key.consumer,
            &key.id,
            schedule.overlap,
            now,
        )
        .await
        {
            Ok(rotation) => rotation,
            Err(StoreError::Conflict(message)) => {
                // Another node rotated, revoked or expired the key since this node read it.
                tracing::debug!(key.id = %key.id, %message, "skipped a scheduled rotation");
                continue;
            }
            Err(error) => {
                tracing::error!(consumer.name = %key.consumer, key.id = %key.id, %error, "scheduled key rotation failed");
                continue;
            }
        };
        rotated += 1;
        metrics
            .rotated
            .get_or_create(&RotationLabels {
                trigger: "schedule",
            })
            .inc();
        let previous = &rotation.rotated.previous;
        let successor = &rotation.rotated.successor;
        tracing::info!(consumer.name = %key.consumer, key.id = %previous.id, key.successor = %successor.id, config.version = rotation.rotated.version, "rotated an API key on schedule");
        // The new key must work on this node before its owner can receive it. Other nodes
        // follow through the store's change feed within their version check interval.
        control.apply_write(rotation.rotated.version).await;
        let event = RotationEvent {
            event: "key.rotated",
            consumer: &successor.consumer,
            key: &rotation.plaintext,
            key_id: &successor.id,
            prefix: &successor.prefix,
            expires_at: successor.expires_at,
            scopes: &successor.scopes,
            old_key_id: &previous.id,
            old_key_expires_at: previous.expires_at,
            rotated_at: successor.created_at,
        };
        if let Err(error) = sender.send(url, &event).await {
            metrics.webhook_failures.inc();
            // NOTE: the new plaintext is lost when every attempt fails. The old key works until
            // its overlap ends, so an operator can still rotate the new key by its id in time.
            tracing::error!(webhook.url = %url, consumer.name = %key.consumer, key.id = %successor.id, key.previous = %previous.id, %error, "webhook delivery of a rotated key failed after every attempt");
        }
    }
    if !undeliverable.is_empty() {
        // One line per pass, so a long-lived gap does not log once per key.
        tracing::warn!(keys = ?undeliverable, "keys are due for rotation, but no webhook and `key_rotation.webhook_secret` are set to deliver new keys; skipping them");
    }
    rotated
}
