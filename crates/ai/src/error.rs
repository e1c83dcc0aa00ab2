//! Errors of the AI gateway, sent in OpenAI's error shape so that OpenAI SDKs raise them.
//!
//! The body is `{"error": {"message", "type", "param", "code", "status", "request_id"}}`: the
//! first four fields are OpenAI's, and `status` and `request_id` match the gateway's own error
//! body.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

/// An error response of the AI gateway.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct AiError {
    pub status: StatusCode,
    /// OpenAI's error `type`, such as `invalid_request_error`.
    pub kind: &'static str,
    /// Stable machine-readable code.
    pub code: String,
    pub message: String,
    /// The request field at fault, such as `model` or `text`.
    pub param: Option<String>,
}

impl AiError {
    pub fn invalid_request(code: &str, message: impl Into<String>) -> Self {
        AiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: code.to_string(),
            message: message.into(),
            param: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        AiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: code.to_string(),
            message: message.into(),
            param: None,
        }
    }

    pub fn upstream(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        AiError {
            status,
            kind: "api_error",
            code: code.to_string(),
            message: message.into(),
            param: None,
        }
    }

    /// Returns the `error` object of the body.
    pub fn to_value(&self, request_id: &str) -> Value {
        json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
            "status": self.status.as_u16(),
            "request_id": request_id,
        })
    }

    /// Renders the whole JSON body.
    pub fn body(&self, request_id: &str) -> Bytes {
        let mut bytes = serde_json::to_vec(&json!({ "error": self.to_value(request_id) }))
            .expect("a JSON value serialises");
        bytes.push(b'\n');
        Bytes::from(bytes)
    }

    /// Renders the body in Anthropic's error shape, `{"type": "error", "error": {"type",
    /// "message"}}`, for the Anthropic-compatible `/messages` endpoint.
    pub fn anthropic_body(&self, request_id: &str) -> Bytes {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            status if status >= 500 => "api_error",
            _ => "invalid_request_error",
        };
        let body = json!({
            "type": "error",
            "error": {"type": kind, "message": self.message},
            "request_id": request_id,
        });
        let mut bytes = serde_json::to_vec(&body).expect("a JSON value serialises");
        bytes.push(b'\n');
        Bytes::from(bytes)
    }

    /// Translates a provider's error response. Statuses that describe the client's request
    /// pass through; a rejected provider key is the operator's problem, so the client gets 502.
    pub fn from_provider(status: StatusCode, body: &[u8], provider: &str) -> AiError {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        // OpenAI: {error: {message, type, code}}; Anthropic: {type: "error", error: {type,
        // message}}; Gemini: {error: {code, message, status, details}}.
        let error = parsed.get("error");
        let message = error
            .and_then(|error| error.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("provider `{provider}` returned status {status}"));
        // OpenAI and Anthropic name the kind in `type`, Gemini in `status` (such as
        // `INVALID_ARGUMENT`), and Azure OpenAI in `code` (such as `DeploymentNotFound`).
        let provider_type = ["type", "status", "code"]
            .into_iter()
            .find_map(|field| error?.get(field)?.as_str())
            .unwrap_or("");
        // Gemini rejects an invalid key with 400 and the reason `API_KEY_INVALID`.
        let key_rejected = error
            .and_then(|error| error.get("details"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|detail| detail.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
        let status = if key_rejected {
            StatusCode::UNAUTHORIZED
        } else {
            status
        };
        let (status, kind) = match status.as_u16() {
            400 | 404 | 413 | 422 => (status, "invalid_request_error"),
            401 | 403 => (StatusCode::BAD_GATEWAY, "api_error"),
            429 => (status, "rate_limit_error"),
            // Anthropic's 529 means overloaded.
            503 | 529 => (StatusCode::SERVICE_UNAVAILABLE, "api_error"),
            _ if status.is_client_error() => (status, "invalid_request_error"),
            _ => (StatusCode::BAD_GATEWAY, "api_error"),
        };
        let code = match (status.as_u16(), provider_type) {
            (_, "") => "provider_error".to_string(),
            (_, provider_type) => provider_type.to_string(),
        };
        let message = if matches!(status, StatusCode::BAD_GATEWAY) {
            format!("provider `{provider}` failed: {message}")
        } else {
            message
        };
        AiError {
            status,
            kind,
            code,
            message,
            param: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_overloaded_becomes_503() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let error = AiError::from_provider(StatusCode::from_u16(529).unwrap(), body, "claude");
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code, "overloaded_error");
        assert_eq!(error.message, "Overloaded");
    }

    #[test]
    fn provider_auth_error_becomes_502() {
        let body = br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let error = AiError::from_provider(StatusCode::UNAUTHORIZED, body, "openai-main");
        assert_eq!(error.status, StatusCode::BAD_GATEWAY);
        assert!(error.message.contains("openai-main"), "{}", error.message);
    }

    #[test]
    fn gemini_errors_keep_their_status_name() {
        let body = br#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#;
        let error = AiError::from_provider(StatusCode::BAD_REQUEST, body, "gemini-main");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code, "INVALID_ARGUMENT");
        assert_eq!(error.message, "Invalid JSON payload received.");

        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let error = AiError::from_provider(StatusCode::BAD_REQUEST, body, "gemini-main");
        assert_eq!(error.status, StatusCode::BAD_GATEWAY);
        assert!(error.message.contains("gemini-main"), "{}", error.message);
    }

    #[test]
    fn azure_error_code_is_kept() {
        let body = br#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#;
        let error = AiError::from_provider(StatusCode::NOT_FOUND, body, "azure-main");
        assert_eq!(error.status, StatusCode::NOT_FOUND);
        assert_eq!(error.code, "DeploymentNotFound");
    }

    #[test]
    fn body_has_openai_fields() {
        let error = AiError::invalid_request("invalid_json", "bad").with_param("messages");
        let body: Value = serde_json::from_slice(&error.body("r1")).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(body["error"]["code"], "invalid_json");
        assert_eq!(body["error"]["status"], 400);
        assert_eq!(body["error"]["request_id"], "r1");
    }
}
