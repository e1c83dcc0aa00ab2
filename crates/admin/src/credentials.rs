//! Provider credentials for the AI gateway: `PUT`, `GET` and `DELETE /ai/credentials/{name}`.
//!
//! A value is encrypted with this node's master key before it reaches the store, and no
//! response carries it: reads show its fingerprint, the first 8 hex digits of its SHA-256.
//! Without `secrets.master_key` every endpoint here returns 503.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use portcullis_config::{ApiKey, KeyError};
use portcullis_store::CredentialRecord;
use portcullis_store::credentials::{CredentialCipher, fingerprint};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{AdminState, ApiError, parse_json};

/// Largest credential value accepted, in bytes.
const MAX_VALUE_BYTES: usize = 8192;

/// Body of `PUT /ai/credentials/{name}`. Its `Debug` form redacts the value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutCredential {
    value: ApiKey,
}

/// A credential as the admin API shows it: never its value.
#[derive(Debug, Serialize)]
pub struct CredentialView {
    pub name: String,
    /// First 8 hex digits of the SHA-256 of the value; `null` when this node cannot decrypt it.
    pub fingerprint: Option<String>,
    /// Id of the master key that encrypted the value.
    pub key_id: String,
    /// Providers in this node's `ai.providers` that use the credential.
    pub used_by: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The reason this node cannot decrypt the value, such as another master key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CredentialView {
    fn new(record: &CredentialRecord, cipher: &CredentialCipher, state: &AdminState) -> Self {
        let (fingerprint, error) = match cipher.open(record) {
            Ok(value) => (Some(fingerprint(&value)), None),
            Err(error) => (None, Some(error.to_string())),
        };
        CredentialView {
            name: record.name.clone(),
            fingerprint,
            key_id: record.key_id.clone(),
            used_by: providers_using(state, &record.name),
            created_at: record.created_at,
            updated_at: record.updated_at,
            error,
        }
    }
}

/// Returns the cipher, or the 503 error of a node without a master key.
fn cipher(state: &AdminState) -> Result<&CredentialCipher, ApiError> {
    state.control.credential_cipher().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "master_key_not_set",
            "this node has no `secrets.master_key`, so it cannot encrypt or decrypt provider \
             credentials; set it to the base64 of 32 random bytes and restart the node",
        )
    })
}

/// Returns the providers of this node's file whose `api_key` or `api_keys` name `credential`.
fn providers_using(state: &AdminState, credential: &str) -> Vec<String> {
    let config = state.control.config();
    let Some(ai) = &config.ai else {
        return Vec::new();
    };
    ai.providers
        .iter()
        .filter(|provider| {
            provider
                .pool_keys()
                .iter()
                .any(|key| key.credential() == Some(credential))
        })
        .map(|provider| provider.name.clone())
        .collect()
}

fn check_value(value: &ApiKey) -> Result<(), ApiError> {
    let value = value.expose();
    let message = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.len() > MAX_VALUE_BYTES {
        format!("must be at most {MAX_VALUE_BYTES} bytes")
    } else if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
        "must be printable ASCII without spaces, because it is sent in a request header".to_string()
    } else {
        return Ok(());
    };
    Err(ApiError::invalid(vec![KeyError {
        key: "value".into(),
        message,
    }]))
}

/// Encrypts and stores a credential, creating or replacing it, and returns its metadata.
pub async fn put_credential(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(name): crate::PathParams<String>,
    crate::RawBody(body): crate::RawBody,
) -> Result<Json<CredentialView>, ApiError> {
    let cipher = cipher(&state)?;
    let mut errors = Vec::new();
    portcullis_config::check_entity_name(&mut errors, "name", &name);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let request: PutCredential = parse_json(&body)?;
    check_value(&request.value)?;
    let sealed = cipher
        .seal(&name, request.value.expose())
        .map_err(|error| {
            tracing::error!(%error, credential = %name, "cannot encrypt a provider credential");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encryption_failed",
                "the credential could not be encrypted; nothing was stored",
            )
        })?;
    let (version, record) = state.control.store().put_credential(&sealed).await?;
    state.control.apply_write(version).await;
    tracing::info!(
        credential = %name,
        master_key.id = cipher.key_id(),
        config.version = version,
        "stored a provider credential through the admin API"
    );
    Ok(Json(CredentialView::new(&record, cipher, &state)))
}

/// Lists every stored credential's metadata.
pub async fn list_credentials(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cipher = cipher(&state)?;
    let records = state.control.store().credentials().await?;
    let views: Vec<CredentialView> = records
        .iter()
        .map(|record| CredentialView::new(record, cipher, &state))
        .collect();
    Ok(Json(serde_json::json!({ "data": views })))
}

/// Returns one credential's metadata.
pub async fn get_credential(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(name): crate::PathParams<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let cipher = cipher(&state)?;
    let records = state.control.store().credentials().await?;
    records
        .iter()
        .find(|record| record.name == name)
        .map(|record| Json(CredentialView::new(record, cipher, &state)))
        .ok_or_else(|| ApiError::not_found(format!("credential `{name}` not found")))
}

/// Deletes a credential; 409 while a provider of this node's file uses it.
///
/// NOTE: only this node's `ai.providers` are checked. After the deletion, another node whose
/// file names the credential returns 503 for that provider's calls.
pub async fn delete_credential(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(name): crate::PathParams<String>,
) -> Result<StatusCode, ApiError> {
    cipher(&state)?;
    let users = providers_using(&state, &name);
    if !users.is_empty() {
        let names: Vec<String> = users.iter().map(|user| format!("`{user}`")).collect();
        return Err(ApiError::conflict(format!(
            "credential `{name}` is used by provider {} in this node's `ai.providers`; remove \
             it from the file and reload before deleting the credential",
            names.join(", ")
        )));
    }
    let version = state.control.store().delete_credential(&name).await?;
    state.control.apply_write(version).await;
    tracing::info!(credential = %name, config.version = version, "deleted a provider credential through the admin API");
    Ok(StatusCode::NO_CONTENT)
}
