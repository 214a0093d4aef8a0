//! Building calls for a plugin's unit tests.
//!
//! Plugin logic kept in plain functions can be tested natively (`cargo test`) with calls built
//! here, the way the gateway would build them:
//!
//! ```
//! use caracal_plugin_sdk::testing::CallBuilder;
//!
//! let call = CallBuilder::new("POST", "/items")
//!     .query("dry_run=1")
//!     .header("content-type", "application/json")
//!     .config(r#"{"methods": ["POST"]}"#)
//!     .now_unix_ms(1_767_607_200_000)
//!     .build();
//! assert_eq!(call.request.path_and_query(), "/items?dry_run=1");
//! ```

use crate::{Call, Header, Mandate, Principal, RequestHead, Resource};

/// A [`Call`] under construction, with plausible placeholder values for everything not set.
#[derive(Debug, Clone)]
pub struct CallBuilder {
    call: Call,
}

impl CallBuilder {
    /// A call for `method path`: no query, no headers, configuration `{}`, clock at the Unix
    /// epoch, and placeholder principal, mandate and resource.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            call: Call {
                request_id: "test-request".to_owned(),
                now_unix_ms: 0,
                request: RequestHead {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    query: None,
                    headers: Vec::new(),
                    body_sha256: None,
                },
                principal: Principal {
                    application_id: "test-application".to_owned(),
                    zone_id: "test-zone".to_owned(),
                    registration_method: "admin".to_owned(),
                    agent_session_id: None,
                    lifecycle: None,
                    labels: Vec::new(),
                },
                mandate: Mandate {
                    subject: "test-subject".to_owned(),
                    session_id: "test-session".to_owned(),
                    scopes: Vec::new(),
                    delegation_edge_id: None,
                    hop_count: 0,
                    token_id: "test-token".to_owned(),
                    issued_at: 0,
                    expires_at: 0,
                },
                resource: Resource {
                    id: "test-resource".to_owned(),
                    identifier: "resource://test".to_owned(),
                    upstream_url: "http://127.0.0.1:9".to_owned(),
                    scopes: Vec::new(),
                    auth_mode: "none".to_owned(),
                },
                config: "{}".to_owned(),
            },
        }
    }

    /// Set the query string (without `?`).
    pub fn query(mut self, query: &str) -> Self {
        self.call.request.query = Some(query.to_owned());
        self
    }

    /// Add a request header (`name` as the gateway passes it: lowercase).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.call.request.headers.push(Header {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// Set the body digest, as the gateway does for a plugin whose `configure` asked for it.
    pub fn body_sha256(mut self, digest: [u8; 32]) -> Self {
        self.call.request.body_sha256 = Some(digest.to_vec());
        self
    }

    /// Set the binding's configuration text.
    pub fn config(mut self, config: &str) -> Self {
        self.call.config = config.to_owned();
        self
    }

    /// Set the gateway's clock, in milliseconds since the Unix epoch.
    pub fn now_unix_ms(mut self, now_unix_ms: i64) -> Self {
        self.call.now_unix_ms = now_unix_ms;
        self
    }

    /// Add a label to the agent session.
    pub fn label(mut self, label: &str) -> Self {
        self.call.principal.labels.push(label.to_owned());
        self
    }

    /// Set the mandate's scopes.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.call.mandate.scopes = scopes.iter().map(|scope| (*scope).to_owned()).collect();
        self
    }

    /// The finished call.
    pub fn build(self) -> Call {
        self.call
    }
}
