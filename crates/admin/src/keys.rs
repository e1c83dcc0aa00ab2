//! API-key handlers: issue, list, find by prefix, read, rotate and revoke. The plaintext of a
//! key is returned once, in the response that creates it; the store keeps only its keyed hash.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_control::rotation::{self, RotationLabels};
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
    pub rotated_to: Option<String>,
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
            rotated_to: record.rotated_to.clone(),
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
    let now = rotation::issue_time();
    let expires_at = match (request.expires_at, request.expires_in.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "set `expires_at` or `expires_in`, not both",
            ));
        }
        (Some(at), None) => Some(at),
        (None, Some(text)) => {
            Some(rotation::expiry_after(now, text).map_err(ApiError::bad_request)?)
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
    let issued = rotation::new_key(
        state.control.hasher(),
        &consumer,
        now,
        expires_at,
        request.scopes,
    );
    let version = state.control.store().insert_key(&issued.record).await?;
    state.control.apply_write(version).await;
    state.control.key_metrics().issued.inc();
    tracing::info!(consumer.name = %consumer, key.id = %issued.record.id, config.version = version, "issued an API key");
    let issued = IssuedKey {
        view: KeyView::from(&issued.record),
        key: issued.plaintext,
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

pub async fn revoke_key(
    State(state): State<Arc<AdminState>>,
    crate::PathParams((consumer, id)): crate::PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    // The metric counts only first revocations, so the key is read before the write.
    let was_revoked = state
        .control
        .store()
        .list_keys(&consumer)
        .await?
        .iter()
        .any(|key| key.id == id && key.revoked_at.is_some());
    let version = state.control.store().revoke_key(&consumer, &id).await?;
    state.control.apply_write(version).await;
    if !was_revoked {
        state.control.key_metrics().revoked.inc();
    }
    tracing::info!(consumer.name = %consumer, key.id = %id, config.version = version, "revoked an API key");
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /consumers/{name}/keys/{id}/rotate`; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, such as `24h`; `key_rotation.overlap` when absent.
    #[serde(default)]
    pub overlap: Option<String>,
}

/// The response to a rotation: the new key with its plaintext, and the old key.
#[derive(Debug, Serialize)]
pub struct RotatedKeyView {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
    pub previous: KeyView,
}

pub async fn rotate_key(
    State(state): State<Arc<AdminState>>,
    crate::PathParams((consumer, id)): crate::PathParams<(String, String)>,
    crate::RawBody(body): crate::RawBody,
) -> Result<Response, ApiError> {
    let request: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        parse_json(&body)?
    };
    let overlap = match request.overlap.as_deref() {
        Some(text) => rotation::parse_overlap(text).map_err(ApiError::bad_request)?,
        None => state.control.config().key_rotation.overlap,
    };
    let rotation = rotation::rotate_key(
        state.control.store().as_ref(),
        state.control.hasher(),
        &consumer,
        &id,
        overlap,
        rotation::issue_time(),
    )
    .await?;
    let rotated = &rotation.rotated;
    state.control.apply_write(rotated.version).await;
    state
        .control
        .key_metrics()
        .rotated
        .get_or_create(&RotationLabels { trigger: "admin" })
        .inc();
    tracing::info!(consumer.name = %consumer, key.id = %id, key.successor = %rotated.successor.id, config.version = rotated.version, "rotated an API key");
    let response = RotatedKeyView {
        key: rotation.plaintext,
        view: KeyView::from(&rotated.successor),
        previous: KeyView::from(&rotated.previous),
    };
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

/// Query of `GET /keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindKeys {
    /// Beginning of the key's public prefix, such as `pcs_4vQe`.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub consumer: Option<String>,
}

pub async fn find_keys(
    State(state): State<Arc<AdminState>>,
    query: Result<axum::extract::Query<FindKeys>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::extract::Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    })?;
    let prefix = query.prefix.unwrap_or_default();
    rotation::check_lookup_prefix(&prefix).map_err(ApiError::bad_request)?;
    let keys = state
        .control
        .store()
        .find_keys(&prefix, query.consumer.as_deref())
        .await?;
    let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    Ok(Json(serde_json::json!({ "data": views })))
}
