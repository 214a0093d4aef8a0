//! The Coordinator (`caracal coordinator`) in-process on 127.0.0.1:0, and the session
//! mandates its callers present.
//!
//! The Coordinator verifies mandates against the STS key set of their zone, so a fixture
//! takes the STS's address: either a real [`crate::sts::StsFixture`] (its JWKS serves the
//! keys of `secrets`, including a [`TestSigner`]'s) or any server that answers
//! `/.well-known/jwks.json?zone_id=`.

use std::{collections::HashMap, net::SocketAddr};

use control_coordinator::{CoordinatorConfig, CoordinatorHandle};
use serde_json::{Value, json};

use crate::{
    TestDb,
    gateway::{ISSUER, STREAMS_KEY_HEX, TestSigner},
    http,
    sts::redis_url,
};

/// The operator token every fixture starts with.
pub const OPERATOR_TOKEN: &str = "coordinator-test-operator-token-0123456789";

/// A running Coordinator.
pub struct CoordinatorFixture {
    handle: Option<CoordinatorHandle>,
    /// Listen address.
    pub addr: SocketAddr,
}

impl CoordinatorFixture {
    /// Starts a Coordinator that fetches key sets from the STS at `sts`, with `ISSUER_URL`
    /// [`ISSUER`]; `overrides` replace or add environment settings.
    pub async fn start_with(
        db: &TestDb,
        sts: SocketAddr,
        overrides: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url()),
            ("REDIS_URL".to_owned(), redis_url()),
            ("ISSUER_URL".to_owned(), ISSUER.to_owned()),
            ("CARACAL_STS_URL".to_owned(), format!("http://{sts}")),
            ("STREAMS_HMAC_KEY".to_owned(), STREAMS_KEY_HEX.to_owned()),
            (
                "CARACAL_COORDINATOR_TOKEN".to_owned(),
                OPERATOR_TOKEN.to_owned(),
            ),
            (
                "CARACAL_INSTANCE_ID".to_owned(),
                format!("coordinator-test-{}", addr.port()),
            ),
            ("CARACAL_DB_POOL_MAX".to_owned(), "6".to_owned()),
            ("CARACAL_DB_POOL_MIN".to_owned(), "0".to_owned()),
            ("OUTBOX_POLL_MS".to_owned(), "100".to_owned()),
        ]);
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let lookup = move |name: &str| env.get(name).cloned().filter(|v| !v.is_empty());
        let config = CoordinatorConfig::from_lookup(&lookup)?;
        let handle = control_coordinator::start_with_listener(config, &lookup, listener).await?;
        Ok(Self {
            handle: Some(handle),
            addr,
        })
    }

    /// A request with `token` as the bearer and a JSON body (`None`: no body); `headers` are
    /// added (e.g. `idempotency-key`).
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<http::HttpResponse> {
        let auth = format!("Bearer {token}");
        let mut all: Vec<(&str, &str)> = vec![("authorization", &auth)];
        all.extend_from_slice(headers);
        match body {
            Some(body) => {
                all.push(("content-type", "application/json"));
                http::request(self.addr, method, path, &all, body.to_string()).await
            }
            None => http::request(self.addr, method, path, &all, "").await,
        }
    }

    /// A request with the operator token.
    pub async fn operator(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<http::HttpResponse> {
        self.call(OPERATOR_TOKEN, method, path, body, &[]).await
    }

    /// Stops the Coordinator.
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
    }
}

/// The claims of a `use=session` mandate of `app` in `zone` with authority record `sid`,
/// scope `agent:lifecycle`, valid for 10 minutes; tests add or change members.
pub fn session_claims(zone: &str, app: &str, sid: &str) -> Value {
    let now = crate::oidc::unix_now();
    json!({
        "iss": ISSUER, "sub": app, "aud": [ISSUER], "exp": now + 600, "iat": now,
        "jti": uuid::Uuid::now_v7().to_string(), "zone_id": zone, "client_id": app,
        "scope": "agent:lifecycle", "sid": sid, "root_sid": sid, "use": "session",
        "sub_type": "application",
    })
}

/// A signed session mandate of `app` with record `sid`.
pub fn session_mandate(
    signer: &TestSigner,
    zone: &str,
    app: &str,
    sid: &str,
) -> anyhow::Result<String> {
    signer.sign(&session_claims(zone, app, sid))
}
