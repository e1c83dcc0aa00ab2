//! [`crate::Store::rotate_key`] and [`crate::Store::find_keys`].

use super::{Outcome, finish, insert_key_row};
use crate::backend::{Backend, Tx};
use crate::codec;
use crate::{ApiKeyRecord, KeyRotation, KeyStatus, RotatedKey, StoreError};

pub(crate) async fn rotate_key<B: Backend>(
    backend: &B,
    rotation: &KeyRotation,
) -> Result<RotatedKey, StoreError> {
    let (mut tx, version) = backend.begin_write().await?;
    let result = rotate_key_rows(&mut tx, rotation).await;
    let (outcome, records) = match result {
        Ok(records) => (Ok(Outcome::Changed), Some(records)),
        Err(error) => (Err(error), None),
    };
    let version = finish(tx, version, "rotate key", outcome).await?;
    let (previous, successor) = records.expect("a committed rotation has its records");
    Ok(RotatedKey {
        version,
        previous,
        successor,
    })
}

/// Checks that the key can be rotated, inserts its successor and marks the key rotated.
/// Returns the updated key and its successor.
async fn rotate_key_rows<T: Tx>(
    tx: &mut T,
    rotation: &KeyRotation,
) -> Result<(ApiKeyRecord, ApiKeyRecord), StoreError> {
    let consumer = rotation.consumer.as_str();
    let id = rotation.id.as_str();
    let Some(row) = tx.consumer_key(consumer, id).await? else {
        return Err(StoreError::NotFound(format!(
            "key `{id}` of consumer `{consumer}`"
        )));
    };
    let mut previous = codec::key_record(row)?;
    let at = rotation.at;
    // `at` may be truncated to whole seconds, so the status checks use the current time.
    // Otherwise a key revoked earlier in the same second would count as active.
    let now = time::OffsetDateTime::now_utc().max(at);
    match previous.status(now) {
        KeyStatus::Active => {}
        KeyStatus::Revoked => {
            return Err(StoreError::Conflict(format!(
                "key `{id}` of consumer `{consumer}` is revoked, and a revoked key cannot be \
                 rotated; issue a new key instead"
            )));
        }
        KeyStatus::Expired => {
            return Err(StoreError::Conflict(format!(
                "key `{id}` of consumer `{consumer}` has expired, and an expired key cannot be \
                 rotated; issue a new key instead"
            )));
        }
    }
    if let Some(successor) = &previous.rotated_to {
        return Err(StoreError::Conflict(format!(
            "key `{id}` of consumer `{consumer}` was rotated already, to key `{successor}`; \
             rotate that key instead"
        )));
    }

    // The overlap only ever shortens the key's life, so an earlier expiry stays.
    let overlap_end = at
        .checked_add(rotation.overlap)
        .ok_or_else(|| StoreError::Invalid(format!("overlap {} is too long", rotation.overlap)))?;
    let previous_expiry = match previous.expires_at {
        Some(expires_at) if expires_at < overlap_end => expires_at,
        _ => overlap_end,
    };
    // The successor gets the same lifetime as the key it replaces.
    let successor_expiry = match previous.expires_at {
        Some(expires_at) => Some(
            at.checked_add(expires_at - previous.created_at)
                .ok_or_else(|| {
                    StoreError::Invalid(format!("the lifetime of key `{id}` is too long"))
                })?,
        ),
        None => None,
    };
    let successor = ApiKeyRecord {
        id: rotation.successor_id.clone(),
        consumer: previous.consumer.clone(),
        hash: rotation.successor_hash.clone(),
        prefix: rotation.successor_prefix.clone(),
        created_at: at,
        expires_at: successor_expiry,
        revoked_at: None,
        rotated_from: Some(previous.id.clone()),
        rotated_to: None,
        scopes: previous.scopes.clone(),
        source: "admin".into(),
        last_used_at: None,
    };
    insert_key_row(tx, &successor).await?;

    // The conditional update is what makes a rotation happen once: with several nodes on one
    // database, writers queue on the config version lock, and the second one finds
    // `rotated_to` set and changes nothing.
    let changed = tx
        .mark_rotated(
            id,
            &successor.id,
            &codec::format_timestamp(previous_expiry)?,
            &codec::format_timestamp(now)?,
        )
        .await?;
    if changed == 0 {
        return Err(StoreError::Conflict(format!(
            "key `{id}` of consumer `{consumer}` was rotated, revoked or expired by another \
             writer; read it again"
        )));
    }
    previous.expires_at = Some(previous_expiry);
    previous.rotated_to = Some(successor.id.clone());
    Ok((previous, successor))
}

pub(crate) async fn find_keys<B: Backend>(
    backend: &B,
    prefix: &str,
    consumer: Option<&str>,
) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let mut tx = backend.begin_read().await?;
    let rows = tx.find_keys(prefix, consumer).await?;
    tx.commit().await?;
    rows.into_iter().map(codec::key_record).collect()
}
