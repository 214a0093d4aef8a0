//! A real gateway on `127.0.0.1:<free port>` against a test database and the machine's
//! Redis, and what tests need around it: a zone signing key they hold, mandates signed
//! with it, and stream messages signed like the producers sign them.

use std::{collections::HashMap, net::SocketAddr};

use anyhow::Context as _;
use control_crypto::{HmacKey, KekRing, SealContext, ZoneSigningKey};
use gateway_proxy::{GatewayConfig, GatewayHandle};
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::{TestDb, sts::redis_url};

/// The KEK every fixture uses (the STS fixture's).
pub const KEK_HEX: &str = "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";
/// `STREAMS_HMAC_KEY` of every fixture (the STS fixture's).
pub const STREAMS_KEY_HEX: &str =
    "3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d";
/// `AUDIT_HMAC_KEY` of every fixture (the STS fixture's).
pub const AUDIT_KEY_HEX: &str = "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c";
/// The issuer gateway fixtures accept unless told otherwise.
pub const ISSUER: &str = "http://sts.test.invalid";
/// `CARACAL_ADMIN_TOKEN` of gateway fixtures.
pub const ADMIN_TOKEN: &str = "gateway-test-admin-token-0123456789";

/// A running gateway.
pub struct GatewayFixture {
    handle: Option<GatewayHandle>,
    /// Listen address.
    pub addr: SocketAddr,
    /// `CARACAL_INSTANCE_ID` (unique per fixture).
    pub instance_id: String,
    /// The replay directory.
    pub replay_dir: tempfile::TempDir,
    redis_url: String,
}

impl GatewayFixture {
    /// Starts a gateway accepting mandates of [`ISSUER`].
    pub async fn start(db: &TestDb) -> anyhow::Result<Self> {
        Self::start_with(db, &[]).await
    }

    /// Starts a gateway; `overrides` replace or add environment settings.
    pub async fn start_with(db: &TestDb, overrides: &[(&str, &str)]) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let replay_dir = tempfile::tempdir()?;
        let instance_id = format!("gw-test-{}-{}", addr.port(), uuid::Uuid::new_v4().simple());
        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url()),
            ("REDIS_URL".to_owned(), redis_url()),
            ("ZONE_KEK".to_owned(), KEK_HEX.to_owned()),
            ("AUDIT_HMAC_KEY".to_owned(), AUDIT_KEY_HEX.to_owned()),
            ("STREAMS_HMAC_KEY".to_owned(), STREAMS_KEY_HEX.to_owned()),
            ("ISSUER_URL".to_owned(), ISSUER.to_owned()),
            ("CARACAL_GATEWAY_ADDR".to_owned(), addr.to_string()),
            (
                "AUDIT_REPLAY_DIR".to_owned(),
                replay_dir.path().display().to_string(),
            ),
            ("CARACAL_INSTANCE_ID".to_owned(), instance_id.clone()),
            ("CARACAL_DB_POOL_MAX".to_owned(), "4".to_owned()),
            ("CARACAL_DB_POOL_MIN".to_owned(), "0".to_owned()),
            ("CARACAL_GATEWAY_POLL_SECONDS".to_owned(), "1".to_owned()),
            ("CARACAL_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        ]);
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let redis_url = env.get("REDIS_URL").cloned().unwrap_or_else(redis_url);
        let lookup = move |name: &str| env.get(name).cloned().filter(|v| !v.is_empty());
        let config = GatewayConfig::from_lookup(&lookup)?;
        let handle = gateway_proxy::start_with_listener(config, &lookup, listener).await?;
        Ok(Self {
            handle: Some(handle),
            addr,
            instance_id,
            replay_dir,
            redis_url,
        })
    }

    /// Stops the gateway and removes its consumer groups.
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
        for (stream, base) in gateway_state::GATEWAY_STREAMS {
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

/// A zone signing key the test holds, inserted (sealed under [`KEK_HEX`]) as the zone's
/// active key.
pub struct TestSigner {
    /// `kid`.
    pub kid: String,
    key: ZoneSigningKey,
}

impl TestSigner {
    /// Generates and inserts an active key for `zone`.
    pub async fn insert(conn: &mut PgConnection, zone: &str) -> anyhow::Result<Self> {
        Self::insert_with_status(conn, zone, "active").await
    }

    /// Generates and inserts a key with `status` (`active`, `pending`, `retiring`, `retired`).
    pub async fn insert_with_status(
        conn: &mut PgConnection,
        zone: &str,
        status: &str,
    ) -> anyhow::Result<Self> {
        let key = ZoneSigningKey::generate();
        let kid = uuid::Uuid::now_v7().to_string();
        let kek =
            KekRing::from_lookup(|name: &str| (name == "ZONE_KEK").then(|| KEK_HEX.to_owned()))?;
        let der = key.to_pkcs8_der()?;
        let sealed = kek.seal(
            &SealContext {
                table: "secrets",
                column: "ciphertext",
                zone_id: zone,
                row_id: &kid,
            },
            &der,
        )?;
        let version: i32 = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) + 1 FROM secrets WHERE zone_id = $1 AND name = 'zone_signing_key'",
        )
        .bind(zone)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, version, status, \
                                  activates_at, rotated_at, public_jwk) \
             VALUES ($1, $2, $2, 'zone_signing_key', 'token', $3, $4, $5, $6, $7, now(), \
                     CASE WHEN $7 = 'retiring' THEN now() ELSE NULL END, $8)",
        )
        .bind(&kid)
        .bind(zone)
        .bind(&sealed.ciphertext)
        .bind(sealed.nonce.as_slice())
        .bind(sealed.dek_id.as_str())
        .bind(version)
        .bind(status)
        .bind(key.public_key().to_jwk(&kid))
        .execute(&mut *conn)
        .await
        .context("signing key")?;
        Ok(Self { kid, key })
    }

    /// Signs `claims` (ES256, header `kid`).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        Ok(self.key.sign_jwt(&self.kid, &serde_json::to_vec(claims)?)?)
    }

    /// Signs with another `kid` in the header (an unknown key id).
    pub fn sign_with_kid(&self, kid: &str, claims: &Value) -> anyhow::Result<String> {
        Ok(self.key.sign_jwt(kid, &serde_json::to_vec(claims)?)?)
    }
}

/// A gateway mandate's claims for `zone` / `app` with record `sid`, valid for 5 minutes;
/// tests add or change members.
pub fn gateway_claims(zone: &str, app: &str, sid: &str, resource: &str) -> Value {
    let now = crate::oidc::unix_now();
    json!({
        "iss": ISSUER, "sub": app, "aud": [ISSUER], "exp": now + 300, "iat": now,
        "jti": uuid::Uuid::now_v7().to_string(), "zone_id": zone, "client_id": app,
        "scope": "read", "sid": sid, "root_sid": sid, "use": "gateway", "sub_type": "application",
        "target": [resource],
    })
}

/// Publishes a signed message on `stream` (as an outbox dispatcher would).
pub async fn publish(stream: &str, fields: &[(&str, &str)]) -> anyhow::Result<()> {
    let key = HmacKey::from_hex(STREAMS_KEY_HEX)?;
    let mut pairs: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    pairs.push(("outbox_id".to_owned(), uuid::Uuid::now_v7().to_string()));
    let sig = control_crypto::sign_stream_fields(&key, stream, &pairs)?;
    pairs.push(("_sig".to_owned(), sig));
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _id: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(&pairs)
        .query_async(&mut conn)
        .await?;
    Ok(())
}
