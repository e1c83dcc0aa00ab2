//! Health of a service's upstream targets, as tracked by this node.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::{AdminState, ApiError, PathParams};

/// Returns the health, circuit state and load of each target of a service. The state is this
/// node's own: each node runs its own checks and counts its own traffic.
pub async fn service_health(
    State(state): State<Arc<AdminState>>,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.control.snapshot().load();
    let Some(service) = snapshot.services.get(&name) else {
        return Err(ApiError::not_found(format!("no service named `{name}`")));
    };
    let targets: Vec<_> = service
        .balancer
        .targets
        .iter()
        .map(|target| target.report())
        .collect();
    let healthy = targets
        .iter()
        .filter(|target| target.health == "healthy")
        .count();
    Ok(Json(json!({
        "service": name,
        "algorithm": service.balancer.algorithm.name(),
        "healthy_targets": healthy,
        "targets": targets,
    })))
}
