//! The standalone sidecar (`caracal gateway --config FILE`): no Postgres, the snapshot from a
//! TOML file, keys the test holds, secrets from the lookup or a file; without Redis (replay
//! and audit in process) and with it (the revocation stream bites).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use control_crypto::ZoneSigningKey;
use gateway_proxy::GatewayHandle;
use serde_json::{Value, json};
use tests_harness::{
    gateway::STREAMS_KEY_HEX,
    http::{self, HttpResponse},
    sts::redis_url,
    upstream::Upstream,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::gateway::assert_denied;

const ZONE: &str = "sa-zone";
const AGENT: &str = "agent-app";
const ISSUER: &str = "http://sts.standalone.invalid";
const CRM_KEY: &str = "crm-key-from-the-environment";
const FILE_TOKEN: &str = "files-token-from-a-file";

const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app"}
grants := {
  "resource://crm": {"application": "agent", "roles": {"reader": ["read"]}},
  "resource://files": {"application": "agent", "roles": {"reader": ["read"]}},
  "resource://ops": {"application": "agent", "roles": {"operator": ["read"]}}
}
"#;

/// The configuration; `{keys}`, `{upstream}` and `{redis}` are filled in by [`Sidecar`].
const CONFIG: &str = r#"
listen = "127.0.0.1:0"
issuer = "http://sts.standalone.invalid"
audit_replay_dir = "replay"
{redis}

[[zones]]
id = "sa-zone"
{keys}
policy_files = ["zone.rego"]
[[zones.applications]]
id = "agent-app"
labels = ["reader"]

[[providers]]
id = "crm-env"
zone = "sa-zone"
kind = "api_key"
header_name = "X-Api-Key"
secret_env = "SA_CRM_KEY"

[[providers]]
id = "files-token"
zone = "sa-zone"
kind = "bearer_token"
secret_file = "secrets/files.token"

[[resources]]
zone = "sa-zone"
identifier = "resource://crm"
upstream = "{upstream}/api"
provider = "crm-env"
scopes = ["read"]
operations = [{ method = "GET", path = "/contacts", scope = "read" }]

[[resources]]
zone = "sa-zone"
identifier = "resource://files"
upstream = "{upstream}/files"
provider = "files-token"
scopes = ["read"]
enforcement = "transport_uniform"

[[resources]]
zone = "sa-zone"
identifier = "resource://ops"
upstream = "{upstream}/ops"
provider = "crm-env"
scopes = ["read"]
enforcement = "transport_uniform"
"#;

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "caracal-standalone-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// How the zone gets its keys.
enum Keys {
    /// `key_files` with the test's key.
    File,
    /// `jwks_url` only.
    Url(String),
}

/// A standalone gateway, the key its zone trusts and a real upstream.
struct Sidecar {
    scratch: Scratch,
    key: ZoneSigningKey,
    kid: String,
    upstream: Upstream,
    gateway: Option<GatewayHandle>,
    instance_id: String,
    /// The anchor of every mandate this scenario signs (unique: marks are keyed by id).
    sid: String,
}

impl Sidecar {
    async fn start(redis: bool) -> anyhow::Result<Self> {
        let key = ZoneSigningKey::generate();
        Self::start_with(redis, key, Keys::File).await
    }

    async fn start_with(redis: bool, key: ZoneSigningKey, keys: Keys) -> anyhow::Result<Self> {
        let scratch = Scratch::new();
        let upstream = Upstream::start().await?;
        let kid = format!("kid-{}", uuid::Uuid::new_v4().simple());
        scratch.write("zone.jwk.json", &key.public_key().to_jwk(&kid).to_string());
        scratch.write("zone.rego", POLICY);
        scratch.write("secrets/files.token", &format!("{FILE_TOKEN}\n"));
        let keys = match keys {
            Keys::File => r#"key_files = ["zone.jwk.json"]"#.to_owned(),
            Keys::Url(url) => format!("jwks_url = \"{url}\""),
        };
        let redis_line = if redis {
            format!("redis_url = \"{}\"", redis_url())
        } else {
            String::new()
        };
        let config = CONFIG
            .replace("{keys}", &keys)
            .replace("{upstream}", &upstream.url(""))
            .replace("{redis}", &redis_line);
        let file = scratch.write("gateway.toml", &config);
        let instance_id = format!("gw-standalone-{}", uuid::Uuid::new_v4().simple());
        let gateway = start(&file, &instance_id, &[]).await?;
        Ok(Self {
            scratch,
            key,
            kid,
            upstream,
            gateway: Some(gateway),
            instance_id,
            sid: format!("rec-standalone-{}", uuid::Uuid::new_v4().simple()),
        })
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.gateway.as_ref().map(|g| g.addr).unwrap()
    }

    fn claims(&self, app: &str, resource: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": ISSUER, "sub": app, "aud": [ISSUER], "exp": now + 300, "iat": now,
            "jti": uuid::Uuid::now_v7().to_string(), "zone_id": ZONE, "client_id": app,
            "scope": "read", "sid": self.sid, "root_sid": self.sid, "use": "gateway",
            "sub_type": "application", "target": [resource],
            "delegation_edge_id": format!("edge-{}", self.sid),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        self.key
            .sign_jwt(&self.kid, &serde_json::to_vec(claims).unwrap())
            .unwrap()
    }

    fn mandate(&self, app: &str, resource: &str) -> String {
        self.sign(&self.claims(app, resource))
    }

    async fn call(&self, resource: &str, path: &str, token: &str) -> HttpResponse {
        let auth = format!("Bearer {token}");
        http::request(
            self.addr(),
            "GET",
            path,
            &[
                ("authorization", auth.as_str()),
                ("x-caracal-resource", resource),
            ],
            "",
        )
        .await
        .expect("gateway request")
    }

    /// Stops the gateway (flushing audit) and removes any consumer group it created.
    /// Returns the scenario's directory (removed when dropped).
    async fn stop(mut self) -> Scratch {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        let Ok(client) = redis::Client::open(redis_url()) else {
            return self.scratch;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return self.scratch;
        };
        // The revocation streams' groups (gateway_state::GATEWAY_STREAMS, first three).
        for (stream, base) in [
            (
                control_events::streams::SESSIONS_REVOKE,
                "gateway-revocation",
            ),
            (
                control_events::streams::DELEGATIONS_INVALIDATE,
                "gateway-delegation",
            ),
            (
                control_events::streams::AGENTS_LIFECYCLE,
                "gateway-lifecycle",
            ),
        ] {
            let group = control_events::streams::replica_group(base, &self.instance_id);
            let _destroyed: redis::RedisResult<i64> = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(stream)
                .arg(group)
                .query_async(&mut conn)
                .await;
        }
        self.scratch
    }
}

/// Starts a standalone gateway from `file` with the test's environment: the secret of
/// `crm-env`, the streams key, a unique instance id, plus `extra`.
async fn start(
    file: &Path,
    instance_id: &str,
    extra: &[(&str, &str)],
) -> Result<GatewayHandle, gateway_proxy::GatewayStartError> {
    let mut env: HashMap<String, String> = HashMap::from([
        ("SA_CRM_KEY".to_owned(), CRM_KEY.to_owned()),
        ("STREAMS_HMAC_KEY".to_owned(), STREAMS_KEY_HEX.to_owned()),
        ("CARACAL_INSTANCE_ID".to_owned(), instance_id.to_owned()),
    ]);
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let lookup = move |name: &str| env.get(name).cloned().filter(|v| !v.is_empty());
    gateway_proxy::start_standalone(file, &lookup).await
}

/// Every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                files_below(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test]
async fn standalone_injects_secrets_from_the_environment_and_from_a_file() -> anyhow::Result<()> {
    let s = Sidecar::start(false).await?;
    let resp = s
        .call(
            "resource://crm",
            "/contacts",
            &s.mandate(AGENT, "resource://crm"),
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.path, "/api/contacts");
    assert_eq!(seen.headers.get("x-api-key").unwrap(), CRM_KEY);
    assert!(seen.headers.get("authorization").is_none());

    let resp = s
        .call(
            "resource://files",
            "/report.txt",
            &s.mandate(AGENT, "resource://files"),
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.path, "/files/report.txt");
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {FILE_TOKEN}")
    );

    // Without Redis the audit events go to the replay directory.
    let scratch = s.stop().await;
    let replay = scratch.0.join("replay");
    let files = files_below(&replay);
    assert!(!files.is_empty(), "audit events spilled under {replay:?}");
    Ok(())
}

#[tokio::test]
async fn standalone_without_redis_detects_a_replay_in_process() -> anyhow::Result<()> {
    let s = Sidecar::start(false).await?;
    let token = s.mandate(AGENT, "resource://crm");
    assert_eq!(
        s.call("resource://crm", "/contacts", &token).await.status,
        200
    );
    let resp = s.call("resource://crm", "/contacts", &token).await;
    assert_denied(&resp, 401, "invalid_token", "token replay detected");
    assert_eq!(s.upstream.requests().len(), 1);
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn standalone_refuses_an_application_the_zone_does_not_list() -> anyhow::Result<()> {
    let s = Sidecar::start(false).await?;
    let resp = s
        .call(
            "resource://crm",
            "/contacts",
            &s.mandate("stranger-app", "resource://crm"),
        )
        .await;
    assert_denied(&resp, 401, "access_denied", "invalid client credentials");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn standalone_policy_decides_with_the_configured_labels() -> anyhow::Result<()> {
    let s = Sidecar::start(false).await?;
    // agent-app is a "reader"; resource://ops grants only "operator".
    let resp = s
        .call(
            "resource://ops",
            "/restart",
            &s.mandate(AGENT, "resource://ops"),
        )
        .await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "policy denied (role_scope_mismatch)",
    );
    // The mandate names another target: the contract's own check.
    let resp = s
        .call(
            "resource://crm",
            "/contacts",
            &s.mandate(AGENT, "resource://files"),
        )
        .await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "policy denied (mandate_target_mismatch)",
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_bad_configuration_fails_the_start_naming_the_file_and_key() -> anyhow::Result<()> {
    let scratch = Scratch::new();
    let key = ZoneSigningKey::generate();
    scratch.write(
        "zone.jwk.json",
        &key.public_key().to_jwk("kid-1").to_string(),
    );
    scratch.write("zone.rego", POLICY);
    scratch.write("secrets/files.token", FILE_TOKEN);
    let good = CONFIG
        .replace("{keys}", r#"key_files = ["zone.jwk.json"]"#)
        .replace("{upstream}", "http://127.0.0.1:9")
        .replace("{redis}", "");
    let cases = [
        (
            good.replace("header_name = \"X-Api-Key\"", "header_nam = \"X-Api-Key\""),
            vec![],
            "in [[providers]] #1, key header_nam: unknown field `header_nam`",
        ),
        (
            good.clone(),
            vec![("SA_CRM_KEY", "")],
            "providers[crm-env].secret_env: SA_CRM_KEY is not set or empty",
        ),
        (
            good.replace("secrets/files.token", "secrets/absent.token"),
            vec![],
            "providers[files-token].secret_file (secrets/absent.token): cannot read",
        ),
        (
            good.replace("issuer = \"http://sts.standalone.invalid\"", ""),
            vec![],
            "issuer: is required",
        ),
    ];
    for (config, extra, expected) in cases {
        let file = scratch.write("gateway.toml", &config);
        let error = match start(&file, "gw-standalone-bad", &extra).await {
            Ok(handle) => {
                handle.stop().await;
                panic!("the configuration started: {expected}");
            }
            Err(error) => error.to_string(),
        };
        assert!(
            error.starts_with(&file.display().to_string()),
            "names the file: {error}"
        );
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
        assert!(!error.contains('\n'), "one line: {error:?}");
        assert!(
            !error.contains(CRM_KEY) && !error.contains(FILE_TOKEN),
            "{error}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn standalone_with_redis_denies_a_revoked_session_from_the_stream() -> anyhow::Result<()> {
    let s = Sidecar::start(true).await?;
    let resp = s
        .call(
            "resource://crm",
            "/contacts",
            &s.mandate(AGENT, "resource://crm"),
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    tests_harness::gateway::publish(
        control_events::streams::SESSIONS_REVOKE,
        &[
            ("zone_id", ZONE),
            ("session_id", s.sid.as_str()),
            ("reason", "requested"),
        ],
    )
    .await?;
    let mut last = 0;
    for _ in 0..100 {
        let resp = s
            .call(
                "resource://crm",
                "/contacts",
                &s.mandate(AGENT, "resource://crm"),
            )
            .await;
        last = resp.status;
        if resp.status == 401 {
            assert_denied(&resp, 401, "invalid_token", "session revoked");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, 401, "revoked within two seconds");
    s.stop().await;
    Ok(())
}

/// Serves the JWKS in `body` to every request until the test ends.
async fn jwks_server(body: Arc<Mutex<String>>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _peer)) = listener.accept().await {
            let body = body.lock().map(|b| b.clone()).unwrap_or_default();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _read = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _written = stream.write_all(response.as_bytes()).await;
                let _closed = stream.shutdown().await;
            });
        }
    });
    Ok(format!(
        "http://{addr}/.well-known/jwks.json?zone_id={ZONE}"
    ))
}

#[tokio::test]
async fn standalone_fetches_the_jwks_url_and_again_on_an_unknown_kid() -> anyhow::Result<()> {
    let first = ZoneSigningKey::generate();
    let body = Arc::new(Mutex::new(String::new()));
    let url = jwks_server(Arc::clone(&body)).await?;
    // The kid is only known once the sidecar starts; publish under a fixed one first.
    *body.lock().unwrap() = json!({"keys": [first.public_key().to_jwk("kid-first")]}).to_string();
    let mut s = Sidecar::start_with(false, first, Keys::Url(url)).await?;
    s.kid = "kid-first".to_owned();
    let resp = s
        .call(
            "resource://crm",
            "/contacts",
            &s.mandate(AGENT, "resource://crm"),
        )
        .await;
    assert_eq!(resp.status, 200, "fetched at start: {:?}", resp.json());

    // The issuer rotates: a mandate under the new kid makes the sidecar fetch again.
    let second = ZoneSigningKey::generate();
    *body.lock().unwrap() = json!({"keys": [
        s.key.public_key().to_jwk("kid-first"),
        second.public_key().to_jwk("kid-second"),
    ]})
    .to_string();
    s.key = second;
    s.kid = "kid-second".to_owned();
    let resp = s
        .call(
            "resource://crm",
            "/contacts",
            &s.mandate(AGENT, "resource://crm"),
        )
        .await;
    assert_eq!(
        resp.status,
        200,
        "fetched on the unknown kid: {:?}",
        resp.json()
    );
    s.stop().await;
    Ok(())
}
