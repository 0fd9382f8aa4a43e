//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with a 4xx or 5xx
//! status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An error answered to the client.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: "invalid_request_error" for 4xx, "server_error" for 5xx.
    pub kind: &'static str,
    /// The request field at fault, e.g. `messages[0].content`.
    pub param: Option<String>,
    /// A machine-readable code, e.g. "context_length_exceeded".
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about the request's content.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// A 404 for a model other than the one served.
    pub fn model_not_found(model: &str) -> Self {
        ApiError::invalid(
            format!("The model `{model}` does not exist or you do not have access to it."),
            Some("model"),
        )
        .with_code("model_not_found")
        .with_status(StatusCode::NOT_FOUND)
    }

    /// A 400 for a prompt (plus the tokens asked for) that does not fit the context.
    pub fn context_length(message: String, param: &str) -> Self {
        ApiError::invalid(message, Some(param)).with_code("context_length_exceeded")
    }

    /// A 500: something went wrong on our side.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body: `{"error": {...}}`.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}
