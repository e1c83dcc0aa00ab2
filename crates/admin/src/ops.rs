//! Health, metrics and operations endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::{AdminState, ApiError};

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

/// Query of `GET /health/ready`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ReadyQuery {
    /// Whether to return 503 instead of 200 while degraded, for probes that should take a node out of
    /// service when its snapshot may be stale.
    strict: bool,
}

/// Reports whether the node serves a snapshot in sync with the store.
///
/// A degraded node (the store cannot be read, or the stored entities do not compile) still
/// serves traffic with its last good snapshot, so it answers 200 with `"status": "degraded"`
/// and the reason. Answering 503 there would make every node of a cluster fail its readiness
/// probe during a store outage, and a load balancer would then drop traffic that the nodes can
/// serve. `?strict=true` answers 503 while degraded, for operators who prefer that.
pub async fn ready(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ReadyQuery>,
) -> Response {
    let health = state.control.health();
    let backend = state.control.store().backend();
    match health.degraded {
        None => {
            Json(json!({ "status": "ready", "config_version": health.version, "store": backend }))
                .into_response()
        }
        Some(reason) => {
            let status = if query.strict {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            (
                status,
                Json(json!({ "status": "degraded", "config_version": health.version, "store": backend, "reason": reason })),
            )
                .into_response()
        }
    }
}

pub async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let dropped = state.access_log.dropped();
    let seen = state
        .access_log_dropped_seen
        .swap(dropped, Ordering::AcqRel);
    if dropped > seen {
        state.metrics.access_log_dropped.inc_by(dropped - seen);
    }
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        tracing::error!(%error, "cannot encode metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Re-reads the configuration file, as SIGHUP does.
pub async fn reload(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.control.reload_file().await {
        Ok(version) => Ok(Json(json!({ "config_version": version }))),
        Err(portcullis_control::ControlError::Store(error)) => Err(error.into()),
        Err(error) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reload_failed",
            error.to_string(),
        )),
    }
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this admin endpoint does not accept the method; see /openapi.json",
    )
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no admin endpoint at this path; see /openapi.json")
}
