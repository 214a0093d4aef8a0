//! A real STS on `127.0.0.1:<free port>` against a test database and the machine's Redis.

use std::{collections::HashMap, net::SocketAddr};

use control_sts::{StsConfig, StsHandle};

use crate::{TestDb, http};

/// The Redis the tests use (`CARACAL_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("CARACAL_TEST_REDIS_URL")
        .unwrap_or_else(|_unset| "redis://127.0.0.1:6379".to_owned())
}

/// A running STS and what a test needs to talk to it.
pub struct StsFixture {
    handle: Option<StsHandle>,
    /// Listen address.
    pub addr: SocketAddr,
    /// `ISSUER_URL` (= `http://<addr>`).
    pub issuer: String,
    /// The KEK the STS seals keys with (hex).
    pub kek_hex: String,
    /// The audit HMAC key (hex).
    pub audit_key_hex: String,
    /// `STREAMS_HMAC_KEY` (hex).
    pub streams_key_hex: String,
    /// The replay directory (deleted with the fixture).
    pub replay_dir: tempfile::TempDir,
    /// `CARACAL_INSTANCE_ID`: unique per fixture. Ports are reused between tests and Redis
    /// keeps consumer groups, so a port-derived id would resume an earlier replica's group
    /// and replay the messages published since it stopped.
    pub instance_id: String,
    redis_url: String,
}

impl StsFixture {
    /// Starts an STS with the default test settings.
    pub async fn start(db: &TestDb) -> anyhow::Result<Self> {
        Self::start_with(db, &[]).await
    }

    /// Starts an STS; `overrides` replace or add environment settings.
    pub async fn start_with(db: &TestDb, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let replay_dir = tempfile::tempdir()?;
        let kek_hex = "7a".repeat(32);
        let audit_key_hex = "5c".repeat(32);
        let streams_key_hex = "3d".repeat(32);
        let instance_id = format!("sts-test-{}-{}", addr.port(), uuid::Uuid::new_v4().simple());
        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url()),
            ("REDIS_URL".to_owned(), redis_url()),
            ("ZONE_KEK".to_owned(), kek_hex.clone()),
            ("AUDIT_HMAC_KEY".to_owned(), audit_key_hex.clone()),
            ("STREAMS_HMAC_KEY".to_owned(), streams_key_hex.clone()),
            ("ISSUER_URL".to_owned(), issuer.clone()),
            ("CARACAL_STS_ADDR".to_owned(), addr.to_string()),
            (
                "AUDIT_REPLAY_DIR".to_owned(),
                replay_dir.path().display().to_string(),
            ),
            ("CARACAL_INSTANCE_ID".to_owned(), instance_id.clone()),
            ("CARACAL_DB_POOL_MAX".to_owned(), "4".to_owned()),
            ("CARACAL_DB_POOL_MIN".to_owned(), "0".to_owned()),
            ("CARACAL_ARGON2_M_KIB".to_owned(), "8".to_owned()),
            ("CARACAL_ARGON2_T".to_owned(), "1".to_owned()),
            ("CARACAL_POLICY_POLL_SECONDS".to_owned(), "1".to_owned()),
        ]);
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let redis_url = env.get("REDIS_URL").cloned().unwrap_or_else(redis_url);
        let lookup = move |name: &str| env.get(name).cloned().filter(|v| !v.is_empty());
        let config = StsConfig::from_lookup(&lookup)?;
        let handle = control_sts::start_with_listener(config, &lookup, listener).await?;
        Ok(Self {
            handle: Some(handle),
            addr,
            issuer,
            kek_hex,
            audit_key_hex,
            streams_key_hex,
            replay_dir,
            instance_id,
            redis_url,
        })
    }

    /// `POST /oauth/2/token` with a form.
    pub async fn token(&self, form: &[(&str, &str)]) -> anyhow::Result<http::HttpResponse> {
        http::post_form(self.addr, "/oauth/2/token", form).await
    }

    /// Stops the STS, waits for its tasks, and removes its consumer groups (best effort:
    /// the shared test Redis would otherwise collect one pair per fixture).
    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
        let Ok(client) = redis::Client::open(self.redis_url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        for (stream, base) in [
            (control_events::streams::POLICY_INVALIDATE, "sts-policy"),
            (control_events::streams::KEYS_INVALIDATE, "sts-keys"),
        ] {
            let group = control_events::streams::replica_group(base, &self.instance_id);
            let _destroyed: redis::RedisResult<i64> = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(stream)
                .arg(group)
                .query_async(&mut conn)
                .await;
        }
    }
}

/// The token-exchange grant type.
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Decodes a JWT's claims without verifying (tests verify separately against the JWKS).
pub fn jwt_claims(token: &str) -> anyhow::Result<serde_json::Value> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The test Redis with database `index` selected, flushed first. Tests whose processes
/// heartbeat into shared keys (`caracal:instances:*`) or need an empty keyspace use one of
/// their own (assignments in tests/README.md).
pub async fn isolated_redis(index: u8) -> anyhow::Result<String> {
    let base = redis_url();
    let trimmed = match base.rsplit_once('/') {
        Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
            head.to_owned()
        }
        _ => base.trim_end_matches('/').to_owned(),
    };
    let url = format!("{trimmed}/{index}");
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    Ok(url)
}
