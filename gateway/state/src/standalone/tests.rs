use std::collections::HashMap;

use base64::Engine as _;
use control_crypto::ZoneSigningKey;
use serde_json::json;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::plugins::{InjectMode, PluginHook, PluginState};

const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app"}
grants := {
  "resource://crm": {"application": "agent", "roles": {"reader": ["crm:read"]}}
}
"#;

/// A directory holding a configuration and the files it names.
struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Self {
            dir,
            env: HashMap::from([("CRM_API_KEY".to_owned(), "crm-key-from-env".to_owned())]),
        };
        std::fs::create_dir_all(fixture.dir.path().join("keys")).unwrap();
        std::fs::create_dir_all(fixture.dir.path().join("policies")).unwrap();
        fixture.write("policies/zone-1.rego", POLICY);
        fixture
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn load(&self, config: &str) -> Result<Standalone, StandaloneError> {
        let path = self.write("gateway.toml", config);
        let env = self.env.clone();
        let lookup = move |name: &str| env.get(name).cloned();
        Standalone::load(&path, &lookup, &settings())
    }

    /// The error line of `config`, which must not load.
    fn error(&self, config: &str) -> String {
        match self.load(config) {
            Ok(_) => panic!("the configuration loaded:\n{config}"),
            Err(error) => error.to_string(),
        }
    }
}

fn settings() -> LoadSettings {
    LoadSettings {
        policy: PolicyConfig::with_eval_timeout_ms(50).unwrap(),
        control_audience: "caracal-control".to_owned(),
    }
}

fn pem(key: &ZoneSigningKey) -> String {
    let der = key.to_pkcs8_der().unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_slice());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// A zone-1 with one key file, a resource behind an api_key provider, and the given
/// extra text appended.
fn minimal(fixture: &Fixture, extra: &str) -> String {
    let key = ZoneSigningKey::generate();
    fixture.write(
        "keys/zone-1.jwk.json",
        &key.public_key().to_jwk("kid-1").to_string(),
    );
    format!(
        r#"
issuer = "https://sts.example.com"

[[zones]]
id = "zone-1"
key_files = ["keys/zone-1.jwk.json"]
policy_files = ["policies/zone-1.rego"]

[[providers]]
id = "crm-key"
zone = "zone-1"
kind = "api_key"
header_name = "X-Api-Key"
secret_env = "CRM_API_KEY"

[[resources]]
zone = "zone-1"
identifier = "resource://crm"
upstream = "http://127.0.0.1:9000/api"
provider = "crm-key"
scopes = ["crm:read"]
{extra}
"#
    )
}

#[test]
fn a_full_file_builds_the_snapshot() {
    let fixture = Fixture::new();
    let verify = ZoneSigningKey::generate();
    let other = ZoneSigningKey::generate();
    let signing = ZoneSigningKey::generate();
    fixture.write(
        "keys/zone-1.jwk.json",
        &verify.public_key().to_jwk("kid-1").to_string(),
    );
    fixture.write(
        "keys/zone-2.jwks.json",
        &json!({"keys": [other.public_key().to_jwk("kid-2")]}).to_string(),
    );
    fixture.write("keys/zone-1-signing.pem", &pem(&signing));
    fixture.write("crm-basic-password", "hunter2-from-file\n");
    fixture.write("tagger.wasm", "not a component yet");
    let loaded = fixture
        .load(
            r#"
listen = "127.0.0.1:18081"
issuer = "https://sts.example.com"
redis_url = "redis://127.0.0.1:6379"
audit_replay_dir = "replay"

[[zones]]
id = "zone-1"
key_files = ["keys/zone-1.jwk.json"]
signing_key_file = "keys/zone-1-signing.pem"
policy_files = ["policies/zone-1.rego"]
[[zones.applications]]
id = "agent-app"
labels = ["reader"]
[[zones.applications]]
id = "other-app"

[[zones]]
id = "zone-2"
key_files = ["keys/zone-2.jwks.json"]

[[providers]]
id = "crm-key"
zone = "zone-1"
kind = "api_key"
header_name = "X-Api-Key"
secret_env = "CRM_API_KEY"
allowed_token_hosts = ["CRM.internal"]

[[providers]]
id = "crm-basic"
zone = "zone-1"
kind = "http_basic"
username = "svc"
secret_file = "crm-basic-password"

[[providers]]
id = "mandate"
zone = "zone-1"
kind = "caracal_mandate"

[[providers]]
id = "open"
zone = "zone-2"
kind = "none"

[[resources]]
zone = "zone-1"
identifier = "resource://crm"
upstream = "http://127.0.0.1:9000/api"
provider = "crm-key"
scopes = ["crm:read", "crm:write"]
operations = [{ method = "get", path = "/contacts", scope = "crm:read" }]
rate_limit = { window_seconds = 60, max_requests = 100 }

[[resources]]
zone = "zone-1"
id = "basic"
identifier = "resource://basic"
upstream = "https://basic.example.com"
provider = "crm-basic"
scopes = ["basic"]
enforcement = "transport_uniform"
rate_limit = { window_seconds = 1, max_requests = 5, key_by = "resource" }

[[resources]]
zone = "zone-2"
identifier = "resource://open"
provider = "open"
scopes = ["open"]
plugins = [{ name = "audit-tagger", hook = "injector", file = "tagger.wasm", mode = "replace", config = { header = "x-tag" } }]
"#,
        )
        .unwrap();
    assert_eq!(loaded.listen(), Some("127.0.0.1:18081".parse().unwrap()));
    assert_eq!(loaded.issuer(), Some("https://sts.example.com"));
    assert_eq!(loaded.redis_url(), Some("redis://127.0.0.1:6379"));
    assert_eq!(
        loaded.audit_replay_dir(),
        Some(fixture.dir.path().join("replay").as_path())
    );
    assert!(!loaded.has_jwks_urls());
    assert!(
        !format!("{loaded:?}").contains("6379"),
        "Debug hides the Redis URL"
    );

    let snapshot = loaded.snapshot();
    assert_eq!(snapshot.revision, 0);
    assert_eq!(snapshot.zones.len(), 2);
    assert_eq!(snapshot.binding_count(), 3);
    let zone = snapshot.zone("zone-1").unwrap();
    assert_eq!(zone.keys.get("kid-1"), Some(&verify.public_key()));
    assert_eq!(
        zone.keys.len(),
        1,
        "the signing key does not verify inbound mandates"
    );
    let signer = zone.signer.as_ref().unwrap();
    assert_eq!(signer.kid, keys::thumbprint(&signing.public_key()));
    assert_eq!(signer.key.public_key(), signing.public_key());
    assert!(
        zone.applications
            .get("agent-app")
            .unwrap()
            .is_usable(Utc::now())
    );

    let crm = zone.resources.get("resource://crm").unwrap();
    assert_eq!(crm.resource_id, "resource://crm");
    assert!(crm.enforced);
    assert!(!crm.is_control);
    assert_eq!(
        crm.upstream.as_ref().unwrap().as_str(),
        "http://127.0.0.1:9000/api"
    );
    assert_eq!(
        crm.operation("GET", "/contacts")
            .map(|op| op.scope.as_str()),
        Some("crm:read")
    );
    assert_eq!(
        crm.rate_limit,
        Some(RateLimit {
            window_seconds: 60,
            max_requests: 100,
            per_application: true
        })
    );
    assert_eq!(crm.provider.identifier, "provider://crm-key");
    assert_eq!(
        crm.provider.allowed_token_hosts,
        vec!["crm.internal".to_owned()]
    );
    match &crm.provider.credential {
        Credential::ApiKey {
            placement: KeyPlacement::Header { name, scheme },
            key,
        } => {
            assert_eq!(name.as_str(), "x-api-key");
            assert_eq!(scheme, &None);
            assert_eq!(key.expose(), "crm-key-from-env");
        }
        other => panic!("unexpected credential {other:?}"),
    }
    let basic = zone.resources.get("resource://basic").unwrap();
    assert_eq!(basic.resource_id, "basic");
    assert!(!basic.enforced);
    assert!(!basic.rate_limit.unwrap().per_application);
    match &basic.provider.credential {
        Credential::Basic { value } => {
            let expected =
                base64::engine::general_purpose::STANDARD.encode("svc:hunter2-from-file");
            assert_eq!(value.expose(), format!("Basic {expected}"));
        }
        other => panic!("unexpected credential {other:?}"),
    }
    match &zone.policy {
        PolicySlot::Ready(bundle) => {
            assert!(!bundle.is_deny_all());
            assert!(
                bundle
                    .provenance()
                    .policy_set_version_id
                    .starts_with("standalone:zone-1:")
            );
        }
        PolicySlot::Failed(reason) => panic!("policy failed: {reason}"),
    }

    let zone_2 = snapshot.zone("zone-2").unwrap();
    assert!(zone_2.keys.contains_key("kid-2"));
    assert!(zone_2.signer.is_none());
    assert!(matches!(&zone_2.policy, PolicySlot::Ready(bundle) if bundle.is_deny_all()));
    let open = zone_2.resources.get("resource://open").unwrap();
    assert!(open.upstream.is_none());
    let [plugin] = open.plugins.as_slice() else {
        panic!("one plugin expected: {:?}", open.plugins);
    };
    assert_eq!(plugin.name, "audit-tagger");
    assert_eq!(plugin.hook, PluginHook::Injector);
    assert_eq!(plugin.mode, InjectMode::Replace);
    assert_eq!(&*plugin.config, r#"{"header":"x-tag"}"#);
    let digest: [u8; 32] = sha2::Sha256::digest(b"not a component yet").into();
    assert_eq!(plugin.digest, digest);
    // Compiled and configured only by `load_plugins`: until then the binding fails closed.
    assert!(matches!(plugin.state, PluginState::Failed(_)));
}

#[test]
fn applications_are_checked_only_where_the_zone_lists_them() {
    let fixture = Fixture::new();
    let config = minimal(
        &fixture,
        r#"
[[zones]]
id = "zone-2"
key_files = ["keys/zone-1.jwk.json"]
[[zones.applications]]
id = "agent-app"
labels = ["reader", "writer"]
[[zones.applications]]
id = "bare-app"
"#,
    );
    let loaded = fixture.load(&config).unwrap();
    // zone-1 lists none: any well-formed client.
    assert!(loaded.admits("zone-1", "whoever"));
    assert!(loaded.labels("zone-1", "whoever").is_empty());
    // zone-2 lists two.
    assert!(loaded.admits("zone-2", "agent-app"));
    assert!(loaded.admits("zone-2", "bare-app"));
    assert!(!loaded.admits("zone-2", "stranger"));
    assert_eq!(loaded.labels("zone-2", "agent-app"), ["reader", "writer"]);
    assert!(loaded.labels("zone-2", "bare-app").is_empty());
    // An unknown zone admits nobody.
    assert!(!loaded.admits("zone-3", "agent-app"));
}

#[test]
fn a_secret_comes_from_a_file_without_its_trailing_newline() {
    let fixture = Fixture::new();
    fixture.write("crm.secret", "crm-key-from-file\r\n");
    let config = minimal(&fixture, "").replace(
        r#"secret_env = "CRM_API_KEY""#,
        r#"secret_file = "crm.secret""#,
    );
    let loaded = fixture.load(&config).unwrap();
    let snapshot = loaded.snapshot();
    let binding = snapshot
        .zone("zone-1")
        .and_then(|zone| zone.resources.get("resource://crm"))
        .unwrap();
    match &binding.provider.credential {
        Credential::ApiKey { key, .. } => assert_eq!(key.expose(), "crm-key-from-file"),
        other => panic!("unexpected credential {other:?}"),
    }
}

#[test]
fn every_bad_setting_names_its_key_in_one_line() {
    let fixture = Fixture::new();
    fixture.write("p.wasm", "a component file");
    let cases: Vec<(String, &str)> = vec![
        (
            minimal(&fixture, "").replace(r#"kind = "api_key""#, r#"kind = "magic""#),
            "providers[crm-key].kind",
        ),
        (
            minimal(&fixture, "").replace("CRM_API_KEY", "MISSING_KEY"),
            "providers[crm-key].secret_env: MISSING_KEY",
        ),
        (
            minimal(&fixture, "").replace(
                r#"header_name = "X-Api-Key""#,
                r#"header_name = "X-Api-Key"
auth_header = "X-Other""#,
            ),
            "providers[crm-key].auth_header: does not apply to kind api_key",
        ),
        (
            minimal(&fixture, "").replace(r#"provider = "crm-key""#, r#"provider = "nope""#),
            "resources[resource://crm].provider",
        ),
        (
            minimal(&fixture, "").replace(
                r#"zone = "zone-1"
kind"#,
                r#"zone = "zone-9"
kind"#,
            ),
            "providers[crm-key].zone",
        ),
        (
            minimal(
                &fixture,
                r#"operations = [{ method = "GET", path = "/x", scope = "crm:write" }]"#,
            ),
            "resources[resource://crm].operations[0].scope",
        ),
        (
            minimal(
                &fixture,
                "rate_limit = { window_seconds = 0, max_requests = 1 }",
            ),
            "resources[resource://crm].rate_limit",
        ),
        (
            minimal(&fixture, r#"enforcement = "sometimes""#),
            "resources[resource://crm].enforcement",
        ),
        (
            minimal(
                &fixture,
                r#"plugins = [{ name = "p", hook = "observer", file = "p.wasm" }]"#,
            ),
            "resources[resource://crm].plugins[0].hook",
        ),
        (
            minimal(
                &fixture,
                r#"plugins = [{ name = "p", hook = "authorizer", file = "p.wasm" }, { name = "p", hook = "authorizer", file = "p.wasm" }]"#,
            ),
            "resources[resource://crm].plugins: p is bound twice",
        ),
        (
            minimal(
                &fixture,
                r#"plugins = [{ name = "a", hook = "injector", file = "p.wasm", mode = "replace" }, { name = "b", hook = "injector", file = "p.wasm", mode = "replace" }]"#,
            ),
            "resources[resource://crm].plugins: at most one injector",
        ),
        (
            minimal(
                &fixture,
                r#"plugins = [{ name = "p", hook = "authorizer", file = "missing.wasm" }]"#,
            ),
            "resources[resource://crm].plugins[0].file",
        ),
        (
            minimal(
                &fixture,
                r#"plugins = [{ name = "p", hook = "authorizer", file = "p.wasm", mode = "replace" }]"#,
            ),
            "resources[resource://crm].plugins[0].mode",
        ),
        (
            minimal(
                &fixture,
                r#"plugins = [{ name = "P!", hook = "authorizer", file = "p.wasm" }]"#,
            ),
            "resources[resource://crm].plugins[0].name",
        ),
        (
            minimal(
                &fixture,
                r#"plugins = [{ name = "p", hook = "authorizer", file = "p.wasm", deadline_ms = 0 }]"#,
            ),
            "resources[resource://crm].plugins[0].deadline_ms",
        ),
        (
            minimal(&fixture, "").replace(
                r#"upstream = "http://127.0.0.1:9000/api""#,
                r#"upstream = "ftp://x""#,
            ),
            "resources[resource://crm].upstream",
        ),
        (
            minimal(&fixture, "").replace(
                r#"issuer = "https://sts.example.com""#,
                r#"issuer = "https://sts.example.com/""#,
            ),
            "issuer",
        ),
        (
            minimal(&fixture, "").replace(
                r#"issuer = "https://sts.example.com""#,
                r#"listen = "everywhere""#,
            ),
            "listen",
        ),
        (
            minimal(&fixture, "").replace(r#"key_files = ["keys/zone-1.jwk.json"]"#, ""),
            "zones[zone-1]: needs key_files or jwks_url",
        ),
        (
            minimal(&fixture, "").replace("keys/zone-1.jwk.json", "keys/absent.json"),
            "zones[zone-1].key_files[0] (keys/absent.json): cannot read",
        ),
        (
            minimal(&fixture, "").replace("policies/zone-1.rego", "policies/absent.rego"),
            "zones[zone-1].policy_files[0]",
        ),
        (
            minimal(&fixture, "").replace(
                r#"kind = "api_key"
header_name = "X-Api-Key"
secret_env = "CRM_API_KEY""#,
                r#"kind = "caracal_mandate""#,
            ),
            "providers[crm-key]: kind caracal_mandate",
        ),
        (
            minimal(&fixture, "").replace(r#"id = "zone-1""#, r#"id = "zone 1""#),
            "zones #1: id",
        ),
        (
            "issuer = \"https://sts.example.com\"\n".to_owned(),
            "no [[zones]]",
        ),
    ];
    for (config, expected) in cases {
        let error = fixture.error(&config);
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
        assert!(
            error.starts_with(
                &fixture
                    .dir
                    .path()
                    .join("gateway.toml")
                    .display()
                    .to_string()
            ),
            "{error}"
        );
        assert!(!error.contains('\n'), "one line: {error:?}");
    }
}

#[test]
fn a_parse_error_names_the_line_table_and_key_without_the_value() {
    let fixture = Fixture::new();
    let config = minimal(&fixture, "").replace(
        r#"secret_env = "CRM_API_KEY""#,
        r#"secret_env = "CRM_API_KEY"
scopes = "pasted-secret-value""#,
    );
    let error = fixture.error(&config);
    assert!(error.contains("in [[providers]] #1"), "{error}");
    assert!(error.contains("key scopes"), "{error}");
    assert!(error.contains("line 15"), "{error}");
    assert!(!error.contains("pasted-secret-value"), "{error}");
    assert!(!error.contains('\n'), "{error:?}");

    let unknown = minimal(&fixture, "upstreem = \"http://x\"");
    let error = fixture.error(&unknown);
    assert!(error.contains("in [[resources]] #1"), "{error}");
    assert!(error.contains("upstreem"), "{error}");

    let broken = fixture.error("[[zones]\nid = 1\n");
    assert!(broken.contains("line 1"), "{broken}");
}

#[test]
fn a_secret_that_cannot_be_a_header_value_is_refused_without_repeating_it() {
    let mut fixture = Fixture::new();
    fixture.env.insert(
        "CRM_API_KEY".to_owned(),
        "secret\u{1}with-control".to_owned(),
    );
    let error = fixture.error(&minimal(&fixture, ""));
    assert!(
        error.contains("providers[crm-key].secret_env: CRM_API_KEY"),
        "{error}"
    );
    assert!(error.contains("not a valid header value"), "{error}");
    assert!(!error.contains("with-control"), "{error}");
}

#[test]
fn key_files_must_hold_public_p256_keys_with_a_kid() {
    let fixture = Fixture::new();
    let key = ZoneSigningKey::generate();
    let mut private = key.public_key().to_jwk("kid-1");
    private["d"] = json!("c2VjcmV0LXNjYWxhcg");
    let mut no_kid = key.public_key().to_jwk("kid-1");
    no_kid.as_object_mut().unwrap().remove("kid");
    let rsa = json!({"kty": "RSA", "kid": "rsa-1", "n": "AQAB", "e": "AQAB"});
    for (document, expected) in [
        (private.to_string(), "private key"),
        (no_kid.to_string(), "has no kid"),
        (
            json!({"keys": [rsa]}).to_string(),
            "kid rsa-1: is not an EC P-256 public key",
        ),
        ("{}".to_owned(), "has no kid"),
        (json!({"keys": []}).to_string(), "holds no key"),
        ("not json".to_owned(), "is not a JSON"),
    ] {
        let config = minimal(&fixture, "");
        fixture.write("keys/zone-1.jwk.json", &document);
        let error = match fixture.load(&config) {
            Ok(_) => panic!("{document} loaded"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("zones[zone-1].key_files[0]"), "{error}");
        assert!(error.contains(expected), "expected {expected:?} in {error}");
        assert!(!error.contains("c2VjcmV0"), "{error}");
    }
}

#[test]
fn signing_keys_are_pkcs8_pem_or_der() {
    let key = ZoneSigningKey::generate();
    let from_pem = keys::signing_key(pem(&key).as_bytes()).unwrap();
    assert_eq!(from_pem.public_key(), key.public_key());
    let der = key.to_pkcs8_der().unwrap();
    let from_der = keys::signing_key(&der).unwrap();
    assert_eq!(from_der.public_key(), key.public_key());
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
    assert!(
        keys::signing_key(sec1.as_bytes())
            .unwrap_err()
            .contains("pkcs8")
    );
    assert!(keys::signing_key(b"garbage").is_err());
}

#[test]
fn the_thumbprint_follows_rfc_7638() {
    // RFC 7638 §3.1 uses an RSA key; this checks the member order and encoding instead.
    let key = ZoneSigningKey::generate();
    let jwk = key.public_key().to_jwk("x");
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(canonical.as_bytes()));
    assert_eq!(keys::thumbprint(&key.public_key()), expected);
    assert_eq!(expected.len(), 43);
}

/// Serves `bodies` in turn (status, body), one connection each, then stops.
async fn jwks_server(bodies: Vec<(u16, String)>) -> (url::Url, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        for (status, body) in bodies {
            let (mut stream, _peer) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _read = stream.read(&mut request).await.unwrap();
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
        }
    });
    let url = url::Url::parse(&format!(
        "http://{addr}/.well-known/jwks.json?zone_id=zone-1"
    ))
    .unwrap();
    (url, task)
}

#[tokio::test]
async fn jwks_urls_are_fetched_and_a_failed_refresh_keeps_the_keys() {
    let fixture = Fixture::new();
    let file_key = ZoneSigningKey::generate();
    let fetched_key = ZoneSigningKey::generate();
    let shadowed = ZoneSigningKey::generate();
    let jwks = json!({"keys": [
        fetched_key.public_key().to_jwk("kid-fetched"),
        shadowed.public_key().to_jwk("kid-1"),
        {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
    ]})
    .to_string();
    let (url, server) = jwks_server(vec![(200, jwks), (500, "{}".to_owned())]).await;
    let config = minimal(&fixture, "").replace(
        r#"key_files = ["keys/zone-1.jwk.json"]"#,
        &format!(
            r#"key_files = ["keys/zone-1.jwk.json"]
jwks_url = "{url}""#
        ),
    );
    fixture.write(
        "keys/zone-1.jwk.json",
        &file_key.public_key().to_jwk("kid-1").to_string(),
    );
    let loaded = fixture.load(&config).unwrap();
    assert!(loaded.has_jwks_urls());
    assert_eq!(loaded.snapshot().zone("zone-1").unwrap().keys.len(), 1);

    assert_eq!(loaded.refresh_keys().await, 0);
    let snapshot = loaded.snapshot();
    let keys = &snapshot.zone("zone-1").unwrap().keys;
    assert_eq!(keys.get("kid-fetched"), Some(&fetched_key.public_key()));
    assert!(
        !keys.contains_key("rsa"),
        "keys of another type are skipped"
    );
    assert_eq!(
        keys.get("kid-1"),
        Some(&file_key.public_key()),
        "a key file wins over a fetched kid"
    );

    assert_eq!(loaded.refresh_keys().await, 1);
    let snapshot = loaded.snapshot();
    assert!(
        snapshot
            .zone("zone-1")
            .unwrap()
            .keys
            .contains_key("kid-fetched"),
        "a failed refresh keeps the previous keys"
    );
    server.await.unwrap();
}

#[test]
fn a_quoted_value_never_survives_redaction() {
    assert_eq!(
        redact_quoted(r#"invalid type: string "s3cret", expected a sequence"#),
        r#"invalid type: string "…", expected a sequence"#
    );
    assert_eq!(redact_quoted("unknown field `x`"), "unknown field `x`");
}

#[test]
fn the_shipped_example_parses() {
    let example = include_str!("../../../../deploy/gateway.example.toml");
    let parsed: Result<RawFile, _> = toml::from_str(example);
    assert!(parsed.is_ok(), "{:?}", parsed.err().map(|e| e.to_string()));
}

#[test]
fn the_shipped_example_loads_with_its_files() {
    let fixture = Fixture::new();
    let key = ZoneSigningKey::generate();
    fixture.write(
        "keys/zone-1.jwks.json",
        &json!({"keys": [key.public_key().to_jwk("kid-1")]}).to_string(),
    );
    fixture.write("billing-password", "s3cret\n");
    let example = include_str!("../../../../deploy/gateway.example.toml")
        .replace("/run/secrets/billing-password", "billing-password")
        .replace("/var/lib/caracal/audit-replay", "replay");
    let loaded = fixture.load(&example).unwrap();
    assert!(loaded.has_jwks_urls());
    let snapshot = loaded.snapshot();
    assert_eq!(snapshot.binding_count(), 2);
    assert!(loaded.admits("zone-1", "agent-app"));
    assert!(!loaded.admits("zone-1", "another-app"));
}
