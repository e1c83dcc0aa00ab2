//! Admin API errors, rendered in the same JSON shape as the data plane's.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_config::KeyError;
use portcullis_store::StoreError;
use serde::Serialize;

/// A failed admin call.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<KeyError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// A body that failed validation, with one detail per key path.
    pub fn invalid(details: Vec<KeyError>) -> Self {
        let message = match details.first() {
            Some(first) if details.len() == 1 => format!("`{}`: {}", first.key, first.message),
            Some(first) => format!(
                "`{}`: {} (and {} more)",
                first.key,
                first.message,
                details.len() - 1
            ),
            None => "the request body is invalid".to_string(),
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_entity",
            message,
            details,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(message) => ApiError::conflict(message),
            error if error.is_unavailable() => {
                tracing::error!(%error, "admin write failed: the store is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the configuration store is unavailable; nothing was changed, retry later",
                )
            }
            error => {
                tracing::error!(%error, "admin call failed in the store");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the configuration store failed",
                )
            }
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
    request_id: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: Vec<Detail<'a>>,
}

#[derive(Serialize)]
struct Detail<'a> {
    key: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                status: self.status.as_u16(),
                code: self.code,
                message: &self.message,
                request_id: crate::request_id(),
                details: self
                    .details
                    .iter()
                    .map(|detail| Detail {
                        key: &detail.key,
                        message: &detail.message,
                    })
                    .collect(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
        }
        response
    }
}
