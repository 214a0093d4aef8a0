//! The admin API (`caracal api`) in-process on 127.0.0.1:0, with a test bootstrap token.

use std::{collections::HashMap, net::SocketAddr};

use control_api::{ApiConfig, ApiHandle};

use crate::{TestDb, http, sts::redis_url};

/// The bootstrap admin token every fixture starts with.
pub const BOOTSTRAP_TOKEN: &str = "test-bootstrap-admin-token-0123456789abcdef";

/// A running admin API.
pub struct ApiFixture {
    handle: Option<ApiHandle>,
    /// Listen address.
    pub addr: SocketAddr,
    /// The audit HMAC key (hex) that chains admin audit rows.
    pub audit_key_hex: String,
}

impl ApiFixture {
    /// Starts an API with the default test settings.
    pub async fn start(db: &TestDb) -> anyhow::Result<Self> {
        Self::start_with(db, &[]).await
    }

    /// Starts an API; `overrides` replace or add environment settings.
    pub async fn start_with(db: &TestDb, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_configured(db, overrides, false).await
    }

    /// Starts an API that answers the audit reads in process, as in `caracal all`.
    pub async fn start_with_audit_in_process(db: &TestDb) -> anyhow::Result<Self> {
        Self::start_configured(db, &[], true).await
    }

    async fn start_configured(
        db: &TestDb,
        overrides: &[(&str, &str)],
        audit_in_process: bool,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let audit_key_hex = "5c".repeat(32);
        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url()),
            ("REDIS_URL".to_owned(), redis_url()),
            ("ZONE_KEK".to_owned(), "7a".repeat(32)),
            ("AUDIT_HMAC_KEY".to_owned(), audit_key_hex.clone()),
            ("CARACAL_ADMIN_TOKEN".to_owned(), BOOTSTRAP_TOKEN.to_owned()),
            (
                "CARACAL_INSTANCE_ID".to_owned(),
                format!("api-test-{}", addr.port()),
            ),
            ("CARACAL_DB_POOL_MAX".to_owned(), "4".to_owned()),
            ("CARACAL_DB_POOL_MIN".to_owned(), "0".to_owned()),
            ("CARACAL_ARGON2_M_KIB".to_owned(), "8".to_owned()),
            ("CARACAL_ARGON2_T".to_owned(), "1".to_owned()),
        ]);
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let lookup = move |name: &str| env.get(name).cloned().filter(|v| !v.is_empty());
        let mut config = ApiConfig::from_lookup(&lookup)?;
        config.audit_in_process = audit_in_process;
        let handle = control_api::start_with_listener(config, &lookup, listener).await?;
        Ok(Self {
            handle: Some(handle),
            addr,
            audit_key_hex,
        })
    }

    /// A request with `token` as the bearer and a JSON body (`None`: no body).
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<http::HttpResponse> {
        let auth = format!("Bearer {token}");
        match body {
            Some(body) => {
                http::request(
                    self.addr,
                    method,
                    path,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    body.to_string(),
                )
                .await
            }
            None => http::request(self.addr, method, path, &[("authorization", &auth)], "").await,
        }
    }

    /// A request with the bootstrap token.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<http::HttpResponse> {
        self.call(BOOTSTRAP_TOKEN, method, path, body).await
    }

    /// Stops the API.
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
    }
}

/// Asserts a refusal: status, `error` code, a `request_id` equal to `X-Request-Id`.
/// Returns the body.
pub fn assert_problem(resp: &http::HttpResponse, status: u16, code: &str) -> serde_json::Value {
    let body = resp.json().unwrap_or(serde_json::Value::Null);
    assert_eq!(resp.status, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    assert_eq!(
        resp.header("x-request-id").as_deref(),
        body["request_id"].as_str(),
        "{body}"
    );
    body
}

impl ApiFixture {
    /// Creates a zone with the bootstrap token; returns its id.
    pub async fn create_zone(&self, name: &str) -> anyhow::Result<String> {
        let resp = self
            .admin(
                "POST",
                "/v1/zones",
                Some(&serde_json::json!({"name": name})),
            )
            .await?;
        anyhow::ensure!(resp.status == 201, "zone not created: {:?}", resp.json());
        Ok(resp.json()?["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Mints an admin token with `capability`, global or scoped to `zone`: `(token, id)`.
    pub async fn mint_token(
        &self,
        capability: &str,
        zone: Option<&str>,
    ) -> anyhow::Result<(String, String)> {
        let mut body =
            serde_json::json!({"name": format!("{capability}-token"), "capability": capability});
        if let Some(zone) = zone {
            body["zone_id"] = serde_json::json!(zone);
        }
        let resp = self.admin("POST", "/v1/admin-tokens", Some(&body)).await?;
        anyhow::ensure!(resp.status == 201, "token not minted: {:?}", resp.json());
        let body = resp.json()?;
        Ok((
            body["token"].as_str().unwrap_or_default().to_owned(),
            body["id"].as_str().unwrap_or_default().to_owned(),
        ))
    }
}
