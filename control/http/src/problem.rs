//! A refusal as the admin API and the Coordinator answer it (wire-contract §1.2, §7.2):
//! `{"error", "message", "request_id", "details"?, "error_description"?}`. Each role decides
//! its own refusals; this is only their shape.

use std::borrow::Cow;

use serde_json::{Value, json};

/// A refusal: status, `error` code, message and optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// The snake_case `error` code (wire-contract §6.1, §7.2).
    pub code: Cow<'static, str>,
    /// Human-readable message; never carries a secret or echoes a raw body.
    pub message: Cow<'static, str>,
    /// `details`, e.g. `{"issues":[{path,message}]}`.
    pub details: Option<Value>,
    /// `error_description`: a machine-readable refinement of the code (policy validation).
    pub description: Option<String>,
}

impl Problem {
    /// A problem without details.
    pub fn new(
        status: u16,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            description: None,
        }
    }

    /// Adds `error_description`.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds details.
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 `invalid_body` with one issue.
    pub fn invalid_body(path: &str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_body", "request body is invalid").with_details(json!({
            "issues": [{"path": path, "message": message.into()}]
        }))
    }

    /// 404 `<thing>_not_found`.
    pub fn not_found(thing: &'static str) -> Self {
        Self::new(
            404,
            format!("{thing}_not_found"),
            format!("{thing} not found"),
        )
    }

    /// The JSON body: `{"error","message","request_id","details"?,"error_description"?}`.
    pub fn body(&self, request_id: &str) -> Value {
        let mut body = json!({
            "error": self.code,
            "message": self.message,
            "request_id": request_id,
        });
        if let Some(map) = body.as_object_mut() {
            if let Some(details) = &self.details {
                map.insert("details".to_owned(), details.clone());
            }
            if let Some(description) = &self.description {
                map.insert(
                    "error_description".to_owned(),
                    Value::String(description.clone()),
                );
            }
        }
        body
    }
}
