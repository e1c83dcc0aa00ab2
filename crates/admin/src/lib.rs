//! The portcullis admin API.
//!
//! A JSON REST API on its own listener. Every resource call needs `Authorization: Bearer
//! <admin token>`, compared in constant time. `/health/live`, `/health/ready`, `/metrics` and
//! `/openapi.json` answer without a token, so that probes and scrapers need no secret; they
//! reveal no configuration beyond route names in metric labels.
//!
//! A write goes to the store in one transaction and then rebuilds this node's snapshot before
//! the response is sent, so the next request through this node already sees it. Other nodes
//! pick the change up from the store's config version.

// The OpenAPI schemas are one `json!` literal, deeper than the default macro recursion limit.
#![recursion_limit = "256"]

mod ai_prices;
mod ai_usage;
mod credentials;
mod entities;
mod error;
mod keys;
mod openapi;
mod ops;
mod upstreams;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use portcullis_config::{ConsumerSpec, RouteSpec, ServiceSpec};
use portcullis_control::ControlPlane;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

pub use error::ApiError;
pub use keys::{IssuedKey, KeyView, RotatedKeyView};

/// Shared state of the admin handlers.
pub struct AdminState {
    pub control: Arc<ControlPlane>,
    pub registry: Registry,
    pub token: String,
    pub access_log: portcullis_proxy::access_log::AccessLog,
    pub metrics: Arc<portcullis_proxy::metrics::Metrics>,
    /// Access-log drops already added to the metric.
    pub access_log_dropped_seen: std::sync::atomic::AtomicU64,
}

/// Builds the admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    let resources = Router::new()
        .merge(resource_routes::<ServiceSpec>())
        .merge(resource_routes::<RouteSpec>())
        .merge(resource_routes::<ConsumerSpec>())
        .route(
            "/consumers/{name}/keys",
            get(keys::list_keys).post(keys::create_key),
        )
        .route(
            "/consumers/{name}/keys/{id}",
            get(keys::get_key).delete(keys::revoke_key),
        )
        .route("/services/{name}/health", get(upstreams::service_health))
        .route(
            "/consumers/{name}/keys/{id}/rotate",
            axum::routing::post(keys::rotate_key),
        )
        .route("/keys", get(keys::find_keys))
        .route("/config/reload", axum::routing::post(ops::reload))
        .route("/ai/openapi.json", get(openapi::prompts_document))
        .route("/ai/usage", get(ai_usage::report))
        .route("/ai/prices", get(ai_prices::list))
        // The model contains `/`, such as `openai-main/gpt-4.1`, so the segment is a wildcard.
        .route(
            "/ai/prices/{*model}",
            get(ai_prices::get)
                .put(ai_prices::put)
                .delete(ai_prices::delete),
        )
        .route("/ai/credentials", get(credentials::list_credentials))
        .route(
            "/ai/credentials/{name}",
            get(credentials::get_credential)
                .put(credentials::put_credential)
                .delete(credentials::delete_credential),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::document))
        .merge(resources)
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state)
}

fn resource_routes<R: entities::Resource>() -> Router<Arc<AdminState>> {
    let collection = format!("/{}", R::COLLECTION);
    let item = format!("/{}/{{name}}", R::COLLECTION);
    Router::new()
        .route(
            &collection,
            get(entities::list::<R>).post(entities::create::<R>),
        )
        .route(
            &item,
            get(entities::get::<R>)
                .put(entities::put::<R>)
                .patch(entities::patch::<R>)
                .delete(entities::delete::<R>),
        )
}

async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(presented) = presented else {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "missing_admin_token",
            "the admin API needs `Authorization: Bearer <admin token>`",
        ));
    };
    if !bool::from(presented.as_bytes().ct_eq(state.token.as_bytes())) {
        tracing::warn!(path = %request.uri().path(), "admin call with an invalid token");
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "the admin token is invalid",
        ));
    }
    Ok(next.run(request).await)
}

/// Path parameters, with a malformed one (such as invalid UTF-8) answered in the API's JSON
/// error shape.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParams(value))
            .map_err(|rejection| {
                ApiError::bad_request(format!("invalid path parameter: {}", rejection.body_text()))
            })
    }
}

/// A request body read whole, with read failures (such as a body over the size limit) answered
/// in the API's JSON error shape.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    "invalid_body",
                    format!("cannot read the request body: {}", rejection.body_text()),
                )
            })
    }
}

/// Parses a request body that must be one JSON object.
///
/// The object check comes first because serde reads a JSON array into a struct field by field,
/// so `["a", ["http://..."]]` would otherwise create a service.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    if first.is_some_and(|byte| *byte != b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(error) => {
                    ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
                }
                Ok(_) => ApiError::bad_request(
                    "the request body must be a JSON object, not an array, string, number or null",
                ),
            },
        );
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let key = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
        } else {
            // serde_json appends the line and column, which add nothing in a one-object body.
            let message = strip_position(&inner.to_string()).to_string();
            let key = if key == "." {
                // serde reports a missing or unknown field of the top-level object at the root
                // path, and names the field only in the message.
                field_in_message(&message).unwrap_or_default()
            } else {
                key
            };
            ApiError::invalid(vec![portcullis_config::KeyError { key, message }])
        }
    })
}

/// Removes the ` at line L column C` that serde_json appends to an error message.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(start) if message[start..].contains(" column ") => &message[..start],
        _ => message,
    }
}

/// Returns the field that a serde `missing field` or `unknown field` message names.
fn field_in_message(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

/// Returns a random id for an admin response.
fn request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
