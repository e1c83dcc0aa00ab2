//! API-key handlers: issue, list, read and revoke. The plaintext of a key is returned once, in
//! the response that creates it; the store keeps only its keyed hash.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_policy::api_key::{display_prefix, generate_key, generate_key_id};
use portcullis_store::{ApiKeyRecord, KeyStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{AdminState, ApiError, parse_json};

/// Body of `POST /consumers/{name}/keys`; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Expiry as an RFC 3339 time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Expiry as a duration from now, such as `30d` or `12h`.
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A key as the admin API shows it: never its plaintext or hash.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub consumer: String,
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub rotated_from: Option<String>,
    pub scopes: Vec<String>,
    pub source: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    pub status: KeyStatus,
}

impl From<&ApiKeyRecord> for KeyView {
    fn from(record: &ApiKeyRecord) -> Self {
        KeyView {
            id: record.id.clone(),
            consumer: record.consumer.clone(),
            prefix: record.prefix.clone(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            rotated_from: record.rotated_from.clone(),
            scopes: record.scopes.clone(),
            source: record.source.clone(),
            last_used_at: record.last_used_at,
            status: record.status(OffsetDateTime::now_utc()),
        }
    }
}

/// The response that issues a key, with the plaintext shown this once.
#[derive(Debug, Serialize)]
pub struct IssuedKey {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

pub async fn list_keys(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(consumer): crate::PathParams<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = state.control.store().list_keys(&consumer).await?;
    let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    Ok(Json(serde_json::json!({ "data": views })))
}

pub async fn get_key(
    State(state): State<Arc<AdminState>>,
    crate::PathParams((consumer, id)): crate::PathParams<(String, String)>,
) -> Result<Json<KeyView>, ApiError> {
    let keys = state.control.store().list_keys(&consumer).await?;
    keys.iter()
        .find(|key| key.id == id)
        .map(|key| Json(KeyView::from(key)))
        .ok_or_else(|| {
            ApiError::not_found(format!("key `{id}` of consumer `{consumer}` not found"))
        })
}

pub async fn create_key(
    State(state): State<Arc<AdminState>>,
    crate::PathParams(consumer): crate::PathParams<String>,
    crate::RawBody(body): crate::RawBody,
) -> Result<Response, ApiError> {
    let request: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        parse_json(&body)?
    };
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let expires_at = match (request.expires_at, request.expires_in.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "set `expires_at` or `expires_in`, not both",
            ));
        }
        (Some(at), None) => Some(at),
        (None, Some(text)) => {
            let duration = humantime::parse_duration(text).map_err(|error| {
                ApiError::bad_request(format!(
                    "invalid `expires_in` `{text}`: {error}; write it like `30d`"
                ))
            })?;
            let expires_at = time::Duration::try_from(duration)
                .ok()
                .and_then(|duration| now.checked_add(duration))
                .filter(|at| at.year() <= 9999)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("`expires_in` `{text}` is too far in the future"))
                })?;
            Some(expires_at)
        }
        (None, None) => None,
    };
    if expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::bad_request(
            "the key would expire before it is issued: `expires_at` must be in the future and `expires_in` positive",
        ));
    }
    // A missing consumer is a 404 for this path, not a conflict.
    state.control.store().list_keys(&consumer).await?;
    let key = generate_key();
    let record = ApiKeyRecord {
        id: generate_key_id(),
        consumer: consumer.clone(),
        hash: state.control.hasher().digest_hex(&key),
        prefix: display_prefix(&key),
        created_at: now,
        expires_at,
        revoked_at: None,
        rotated_from: None,
        scopes: request.scopes,
        source: "admin".into(),
        last_used_at: None,
    };
    let version = state.control.store().insert_key(&record).await?;
    state.control.apply_write(version).await;
    tracing::info!(consumer.name = %consumer, key.id = %record.id, config.version = version, "issued an API key");
    let issued = IssuedKey {
        key,
        view: KeyView::from(&record),
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

pub async fn revoke_key(
    State(state): State<Arc<AdminState>>,
    crate::PathParams((consumer, id)): crate::PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let version = state.control.store().revoke_key(&consumer, &id).await?;
    state.control.apply_write(version).await;
    tracing::info!(consumer.name = %consumer, key.id = %id, config.version = version, "revoked an API key");
    Ok(StatusCode::NO_CONTENT)
}
