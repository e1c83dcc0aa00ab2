//! Writes and reads of the `ai_credentials` table. A write bumps the config version, so that
//! every node reloads and decrypts the new value.

use crate::backend::{Backend, CredentialRow, Tx};
use crate::codec;
use crate::credentials::SealedCredential;
use crate::{CredentialRecord, StoreError};

use super::{Outcome, finish};

/// Reads every stored credential, ordered by name.
pub(crate) async fn credentials<B: Backend>(
    backend: &B,
) -> Result<Vec<CredentialRecord>, StoreError> {
    let mut tx = backend.begin_read().await?;
    let rows = tx.credentials(None).await?;
    tx.commit().await?;
    rows.into_iter().map(codec::credential_record).collect()
}

/// Creates or replaces a credential and returns the new version and the stored record.
pub(crate) async fn put_credential<B: Backend>(
    backend: &B,
    credential: &SealedCredential,
) -> Result<(u64, CredentialRecord), StoreError> {
    let (mut tx, locked_version) = backend.begin_write().await?;
    let now = codec::now_timestamp()?;
    let row = CredentialRow {
        name: credential.name.clone(),
        ciphertext: credential.ciphertext.clone(),
        nonce: credential.nonce.clone(),
        key_id: credential.key_id.clone(),
        created_at: now.clone(),
        updated_at: now,
    };
    let missing = || StoreError::NotFound(format!("credential `{}` after its write", row.name));
    let written = async {
        tx.upsert_credential(&row).await?;
        tx.credentials(Some(&row.name))
            .await?
            .pop()
            .ok_or_else(missing)
    }
    .await;
    let (outcome, stored) = match written {
        Ok(stored) => (Ok(Outcome::Changed), Some(stored)),
        Err(error) => (Err(error), None),
    };
    let version = finish(tx, locked_version, "put_credential", outcome).await?;
    // `finish` returns the error of a failed write, so a committed write has its row here.
    let stored = stored.ok_or_else(missing)?;
    Ok((version, codec::credential_record(stored)?))
}

/// Deletes a credential; [`StoreError::NotFound`] when there is none with this name.
pub(crate) async fn delete_credential<B: Backend>(
    backend: &B,
    name: &str,
) -> Result<u64, StoreError> {
    let (mut tx, locked_version) = backend.begin_write().await?;
    let outcome = match tx.delete_credential(name).await {
        Ok(true) => Ok(Outcome::Changed),
        Ok(false) => Err(StoreError::NotFound(format!("credential `{name}`"))),
        Err(error) => Err(error),
    };
    finish(tx, locked_version, "delete_credential", outcome).await
}
