//! The snapshot builder against real Postgres, read as `caracal_gateway`: every provider
//! kind with a sealed secret document, signing keys in each state, resources with limits,
//! plugins and gateway bindings, and policy bundles (reuse, fallback, deny-all).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly, like the tests themselves"
)]

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use control_crypto::{Kek, KekRing, SealContext, ZoneSigningKey};
use control_policy::PolicyConfig;
use control_store::ServiceRole;
use gateway_state::{
    Credential, KeyPlacement, PolicySlot, Provider, RateLimit, Snapshot, ZoneState,
    build::{self, BuildConfig},
};
use serde_json::{Value, json};
use tests_harness::{TestDb, provision::Provision};

const ZONE: &str = "zone-a";
const UPSTREAM: &str = "https://api.example.com/v1";

const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "app-1"}
grants := {
  "resource://none": {"application": "agent", "roles": {"reader": ["read"]}}
}
"#;

fn kek(byte: u8) -> KekRing {
    KekRing::new(Kek::from_bytes(&[byte; 32]).unwrap(), None).unwrap()
}

fn config(kek: KekRing) -> BuildConfig {
    BuildConfig {
        kek,
        policy: PolicyConfig::default(),
        key_grace: Duration::from_secs(24 * 3600),
        control_audience: "caracal-control".to_owned(),
        reporter: None,
        plugins: None,
    }
}

/// A provider row; with `secrets`, a `provider_secret_config` row sealed under `kek` for it.
async fn provider(
    p: &mut Provision,
    kek: &KekRing,
    id: &str,
    kind: &str,
    public: Value,
    secrets: Option<Value>,
) {
    let secret_id = match secrets {
        Some(doc) => {
            let secret_id = format!("{id}-secret");
            let sealed = kek
                .seal(
                    &SealContext {
                        table: "secrets",
                        column: "ciphertext",
                        zone_id: ZONE,
                        row_id: &secret_id,
                    },
                    &serde_json::to_vec(&doc).unwrap(),
                )
                .unwrap();
            sqlx::query(
                "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, version, status) \
                 VALUES ($1, $2, $3, 'provider_secret_config', 'password', $4, $5, $6, 1, 'active')",
            )
            .bind(&secret_id)
            .bind(ZONE)
            .bind(id)
            .bind(&sealed.ciphertext)
            .bind(sealed.nonce.as_slice())
            .bind(sealed.dek_id.as_str())
            .execute(p.conn())
            .await
            .unwrap();
            Some(secret_id)
        }
        None => None,
    };
    sqlx::query(
        "INSERT INTO providers (id, zone_id, name, identifier, provider_kind, config_json, secret_id) \
         VALUES ($1, $2, $1, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(ZONE)
    .bind(format!("provider://{id}"))
    .bind(kind)
    .bind(public)
    .bind(secret_id)
    .execute(p.conn())
    .await
    .unwrap();
}

/// A resource `r-<name>` with identifier `resource://<name>` on provider `provider`.
async fn resource(p: &mut Provision, name: &str, provider: &str) {
    p.resource(
        ZONE,
        &format!("r-{name}"),
        &format!("resource://{name}"),
        &["read", "write"],
        Some(UPSTREAM),
        provider,
    )
    .await
    .unwrap();
}

/// A zone signing key row sealed under `kek`.
#[allow(
    clippy::too_many_arguments,
    reason = "a fixture mirrors the row's columns"
)]
async fn signing_key(
    p: &mut Provision,
    kek: &KekRing,
    zone: &str,
    kid: &str,
    version: i32,
    status: &str,
    activates_in_secs: i64,
    rotated_ago_secs: Option<i64>,
) -> ZoneSigningKey {
    let key = ZoneSigningKey::generate();
    let der = key.to_pkcs8_der().unwrap();
    let sealed = kek
        .seal(
            &SealContext {
                table: "secrets",
                column: "ciphertext",
                zone_id: zone,
                row_id: kid,
            },
            &der,
        )
        .unwrap();
    sqlx::query(
        "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, version, status, \
                              activates_at, rotated_at, public_jwk) \
         VALUES ($1, $2, $2, 'zone_signing_key', 'token', $3, $4, $5, $6, $7, \
                 now() + make_interval(secs => $8), now() - make_interval(secs => $9), $10)",
    )
    .bind(kid)
    .bind(zone)
    .bind(&sealed.ciphertext)
    .bind(sealed.nonce.as_slice())
    .bind(sealed.dek_id.as_str())
    .bind(version)
    .bind(status)
    .bind(activates_in_secs as f64)
    .bind(rotated_ago_secs.map(|s| s as f64))
    .bind(key.public_key().to_jwk(kid))
    .execute(p.conn())
    .await
    .unwrap();
    key
}

/// Zone `zone-a` with everything; `zone-b` without a binding and with a key sealed under
/// another KEK; `zone-c` without anything; `zone-gone` archived.
async fn scenario(db: &TestDb, kek: &KekRing, other: &KekRing) {
    let mut p = Provision::open(db).await.unwrap();
    for zone in [ZONE, "zone-b", "zone-c", "zone-gone"] {
        p.zone(zone).await.unwrap();
    }
    p.exec("UPDATE zones SET archived_at = now() WHERE id = 'zone-gone'")
        .await
        .unwrap();

    // Applications: live, archived, and a DCR one with an expiry.
    p.application(ZONE, "app-1", "s", &[]).await.unwrap();
    p.application(ZONE, "app-archived", "s", &[]).await.unwrap();
    p.exec(
        "UPDATE applications SET archived_at = now() WHERE id = 'app-archived';
         INSERT INTO applications (id, zone_id, name, registration_method, expires_at)
           VALUES ('app-dcr', 'zone-a', 'app-dcr', 'dcr', now() + interval '1 day');
         INSERT INTO applications (id, zone_id, name) VALUES ('app-gone', 'zone-gone', 'app-gone');",
    )
    .await
    .unwrap();

    // Providers of every kind.
    p.provider_none(ZONE, "p-none").await.unwrap();
    provider(
        &mut p,
        kek,
        "p-mandate",
        "caracal_mandate",
        json!({"forward_caracal_identity": true}),
        None,
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-header-key",
        "api_key",
        json!({"header_name": "X-Api-Key", "auth_scheme": "Key", "allowed_token_hosts": ["API.Example.com"]}),
        Some(json!({"api_key": "sk-header"})),
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-query-key",
        "api_key",
        json!({"auth_location": "query", "query_param_name": "key"}),
        Some(json!({"api_key": "sk-query"})),
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-bearer",
        "bearer_token",
        json!({}),
        Some(json!({"bearer_token": "tok-1"})),
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-bearer-custom",
        "bearer_token",
        json!({"auth_header": "X-Token", "auth_scheme": "Token"}),
        Some(json!({"bearer_token": "tok-2"})),
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-basic",
        "http_basic",
        json!({"username": "alice"}),
        Some(json!({"password": "pw"})),
    )
    .await;
    let oauth_public = json!({
        "token_endpoint": "https://auth.example.com/token",
        "client_id": "cid",
        "allowed_token_hosts": ["auth.example.com"],
        "scopes": ["a", "b"],
        "audience": "aud",
        "token_params": {"tenant": "t1"},
        "auth_scheme": "DPoP",
    });
    provider(
        &mut p,
        kek,
        "p-oauth",
        "oauth2_client_credentials",
        oauth_public.clone(),
        Some(json!({"client_secret": "cs"})),
    )
    .await;
    // Same public part, another secret: another fingerprint.
    provider(
        &mut p,
        kek,
        "p-oauth-2",
        "oauth2_client_credentials",
        oauth_public,
        Some(json!({"client_secret": "cs-2"})),
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-oauth-none",
        "oauth2_client_credentials",
        json!({
            "token_endpoint": "https://auth.example.com/token",
            "client_id": "cid",
            "client_auth_method": "none",
            "allowed_token_hosts": ["auth.example.com"],
        }),
        None,
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-pkjwt",
        "oauth2_client_credentials",
        json!({
            "token_endpoint": "https://auth.example.com/token",
            "client_id": "cid",
            "client_auth_method": "private_key_jwt",
            "allowed_token_hosts": ["auth.example.com"],
        }),
        Some(json!({"private_key": "-----BEGIN PRIVATE KEY-----"})),
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-authcode",
        "oauth2_authorization_code",
        json!({}),
        Some(json!({"client_secret": "x"})),
    )
    .await;
    // Sealed under another KEK: cannot be opened.
    provider(
        &mut p,
        other,
        "p-wrong-kek",
        "api_key",
        json!({"header_name": "X-Api-Key"}),
        Some(json!({"api_key": "sk-other"})),
    )
    .await;
    provider(&mut p, kek, "p-no-secret", "bearer_token", json!({}), None).await;
    provider(
        &mut p,
        kek,
        "p-bad-header",
        "bearer_token",
        json!({"auth_header": "bad header"}),
        Some(json!({"bearer_token": "t"})),
    )
    .await;
    provider(
        &mut p,
        kek,
        "p-archived",
        "api_key",
        json!({"header_name": "X-Api-Key"}),
        Some(json!({"api_key": "sk-archived"})),
    )
    .await;
    p.exec("UPDATE providers SET archived_at = now() WHERE id = 'p-archived'")
        .await
        .unwrap();

    for (name, provider) in [
        ("none", "p-none"),
        ("mandate", "p-mandate"),
        ("header-key", "p-header-key"),
        ("query-key", "p-query-key"),
        ("bearer", "p-bearer"),
        ("bearer-custom", "p-bearer-custom"),
        ("basic", "p-basic"),
        ("oauth", "p-oauth"),
        ("oauth-2", "p-oauth-2"),
        ("oauth-none", "p-oauth-none"),
        ("pkjwt", "p-pkjwt"),
        ("authcode", "p-authcode"),
        ("wrong-kek", "p-wrong-kek"),
        ("no-secret", "p-no-secret"),
        ("bad-header", "p-bad-header"),
        ("archived-provider", "p-archived"),
        ("hidden", "p-none"),
        ("routed", "p-none"),
        ("archived", "p-none"),
        ("bad-url", "p-none"),
        ("bad-ops", "p-none"),
    ] {
        resource(&mut p, name, provider).await;
    }
    p.resource(
        ZONE,
        "r-control",
        "caracal-control",
        &["control:read"],
        None,
        "p-none",
    )
    .await
    .unwrap();
    p.exec(
        r#"UPDATE resources SET operations = '[{"method": "get", "path": "/items", "scope": "read"},
                                             {"method": "POST", "path": "/items", "scope": "write"}]'
             WHERE id = 'r-none';
           UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'r-mandate';
           UPDATE resources SET operations = '[{"verb": "GET"}]' WHERE id = 'r-bad-ops';
           UPDATE resources SET upstream_url = 'not a url' WHERE id = 'r-bad-url';
           UPDATE resources SET archived_at = now() WHERE id = 'r-archived';
           INSERT INTO resource_rate_limits (zone_id, resource_id, window_seconds, max_requests, key_by)
             VALUES ('zone-a', 'r-none', 60, 10, 'resource'), ('zone-a', 'r-bearer', 1, 5, 'application');
           INSERT INTO gateway_resource_bindings (zone_id, resource_identifier, resource_id, enabled)
             VALUES ('zone-a', 'resource://hidden', 'r-hidden', false),
                    ('zone-a', 'resource://routed', 'r-routed', true);
           INSERT INTO gateway_plugins (id, zone_id, name, world, component_sha256, component)
             VALUES ('plug-1', 'zone-a', 'first', 'authorizer', sha256('\x01'::bytea), '\x01'),
                    ('plug-2', 'zone-a', 'second', 'authorizer', sha256('\x02'::bytea), '\x02'),
                    ('plug-3', 'zone-a', 'injector', 'credential-injector', sha256('\x03'::bytea), '\x03'),
                    ('plug-4', 'zone-a', 'off', 'authorizer', sha256('\x04'::bytea), '\x04');
           INSERT INTO resource_plugin_bindings (id, zone_id, resource_id, plugin_id, hook, position, mode, enabled)
             VALUES ('rpb-1', 'zone-a', 'r-none', 'plug-3', 'injector', 0, 'augment', true),
                    ('rpb-2', 'zone-a', 'r-none', 'plug-2', 'authorizer', 1, NULL, true),
                    ('rpb-3', 'zone-a', 'r-none', 'plug-1', 'authorizer', 0, NULL, true),
                    ('rpb-4', 'zone-a', 'r-none', 'plug-4', 'authorizer', 2, NULL, false);"#,
    )
    .await
    .unwrap();

    // Signing keys: retired (gone), retiring past its grace (gone), retiring within it,
    // active (the signer), pending in the future (verifies, does not sign yet).
    signing_key(
        &mut p,
        kek,
        ZONE,
        "kid-retired",
        1,
        "retired",
        -7200,
        Some(3600),
    )
    .await;
    signing_key(
        &mut p,
        kek,
        ZONE,
        "kid-expired",
        2,
        "retiring",
        -7200,
        Some(48 * 3600),
    )
    .await;
    signing_key(
        &mut p,
        kek,
        ZONE,
        "kid-retiring",
        3,
        "retiring",
        -7200,
        Some(3600),
    )
    .await;
    signing_key(&mut p, kek, ZONE, "kid-active", 4, "active", -3600, None).await;
    signing_key(&mut p, kek, ZONE, "kid-pending", 5, "pending", 600, None).await;
    // zone-b: its only key is sealed under another KEK.
    signing_key(&mut p, other, "zone-b", "kid-b", 1, "active", -60, None).await;

    p.activate_policy(ZONE, "main", POLICY).await.unwrap();
}

fn zone<'a>(snapshot: &'a Snapshot, id: &str) -> &'a Arc<ZoneState> {
    snapshot
        .zone(id)
        .unwrap_or_else(|| panic!("zone {id} missing"))
}

fn provider_of<'a>(zone: &'a ZoneState, resource: &str) -> &'a Provider {
    &zone
        .resources
        .get(resource)
        .unwrap_or_else(|| panic!("resource {resource} missing"))
        .provider
}

fn unavailable(zone: &ZoneState, resource: &str) -> String {
    match &provider_of(zone, resource).credential {
        Credential::Unavailable(reason) => reason.clone(),
        other => panic!("{resource}: expected Unavailable, got {other:?}"),
    }
}

fn bundle(zone: &ZoneState) -> &Arc<control_policy::Bundle> {
    match &zone.policy {
        PolicySlot::Ready(bundle) => bundle,
        PolicySlot::Failed(reason) => panic!("zone {}: policy failed: {reason}", zone.zone_id),
    }
}

#[tokio::test]
async fn a_build_reads_every_part_of_the_snapshot_as_the_gateway_role() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let (kek, other) = (kek(7), kek(9));
    scenario(&db, &kek, &other).await;
    let pool = db.service_pool(ServiceRole::Gateway).await?;
    let snapshot = build::build(&pool, &config(kek), None).await?;

    assert_eq!(snapshot.revision, build::current_revision(&pool).await?);
    assert!(snapshot.built_at.is_some());
    let mut zones: Vec<&str> = snapshot.zones.keys().map(String::as_str).collect();
    zones.sort_unstable();
    assert_eq!(
        zones,
        ["zone-a", "zone-b", "zone-c"],
        "archived zones are left out"
    );
    let a = zone(&snapshot, ZONE);

    // Applications.
    assert_eq!(a.applications.len(), 3);
    assert!(a.applications["app-1"].is_usable(chrono::Utc::now()));
    assert!(a.applications["app-archived"].archived);
    assert_eq!(a.applications["app-dcr"].registration_method, "dcr");
    assert!(a.applications["app-dcr"].expires_at.is_some());

    // Keys: pending, active and retiring within grace verify; the active key signs.
    let mut kids: Vec<&str> = a.keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    assert_eq!(kids, ["kid-active", "kid-pending", "kid-retiring"]);
    let signer = a.signer.as_ref().expect("zone-a has a signer");
    assert_eq!(signer.kid, "kid-active");
    let token = signer.key.sign_jwt(&signer.kid, br#"{"sub":"x"}"#)?;
    control_crypto::UnverifiedJwt::parse(&token)?.verify(&a.keys["kid-active"])?;
    // zone-b: the key verifies from its public JWK but cannot sign.
    let b = zone(&snapshot, "zone-b");
    assert!(b.keys.contains_key("kid-b"));
    assert!(b.signer.is_none());

    // Resources: archived and disabled ones are left out; no binding row means routable.
    assert!(!a.resources.contains_key("resource://archived"));
    assert!(!a.resources.contains_key("resource://hidden"));
    assert!(a.resources.contains_key("resource://routed"));
    assert_eq!(a.resources.len(), 20);
    assert_eq!(snapshot.binding_count(), 20);

    let none = &a.resources["resource://none"];
    assert_eq!(none.resource_id, "r-none");
    assert_eq!(none.scopes, ["read", "write"]);
    assert_eq!(none.upstream.as_ref().map(url::Url::as_str), Some(UPSTREAM));
    assert!(none.enforced);
    assert!(!none.is_control);
    assert_eq!(
        none.operation("GET", "/items").map(|o| o.scope.as_str()),
        Some("read")
    );
    assert_eq!(none.operations[0].method, "GET", "methods are upper-cased");
    assert_eq!(
        none.operation("post", "/items").map(|o| o.scope.as_str()),
        Some("write")
    );
    assert_eq!(
        none.rate_limit,
        Some(RateLimit {
            window_seconds: 60,
            max_requests: 10,
            per_application: false
        })
    );
    let plugins: Vec<(&str, &str)> = none
        .plugins
        .iter()
        .map(|p| (p.hook.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(
        plugins,
        [
            ("authorizer", "first"),
            ("authorizer", "second"),
            ("injector", "injector")
        ]
    );
    assert_eq!(
        a.resources["resource://bearer"].rate_limit,
        Some(RateLimit {
            window_seconds: 1,
            max_requests: 5,
            per_application: true
        })
    );
    assert!(a.resources["resource://bearer"].plugins.is_empty());
    assert!(!a.resources["resource://mandate"].enforced);
    assert!(a.resources["resource://bad-url"].upstream.is_none());
    assert!(a.resources["resource://bad-ops"].operations.is_empty());
    let control = &a.resources["caracal-control"];
    assert!(control.is_control);
    assert!(control.upstream.is_none());

    // Providers are shared between resources.
    assert!(Arc::ptr_eq(
        &a.resources["resource://none"].provider,
        &a.resources["resource://routed"].provider
    ));
    assert!(matches!(
        provider_of(a, "resource://none").credential,
        Credential::None
    ));
    assert_eq!(provider_of(a, "resource://none").auth_mode(), "none");
    let mandate = provider_of(a, "resource://mandate");
    assert!(matches!(mandate.credential, Credential::CaracalMandate));
    assert!(mandate.forward_caracal_identity);
    assert!(!provider_of(a, "resource://none").forward_caracal_identity);

    let header_key = provider_of(a, "resource://header-key");
    assert_eq!(header_key.identifier, "provider://p-header-key");
    assert_eq!(header_key.kind, "api_key");
    assert_eq!(header_key.allowed_token_hosts, ["api.example.com"]);
    match &header_key.credential {
        Credential::ApiKey {
            placement: KeyPlacement::Header { name, scheme },
            key,
        } => {
            assert_eq!(name.as_str(), "x-api-key");
            assert_eq!(scheme.as_deref(), Some("Key"));
            assert_eq!(key.expose(), "sk-header");
            assert_eq!(format!("{key:?}"), "Secret(..)");
        }
        other => panic!("header api key: {other:?}"),
    }
    match &provider_of(a, "resource://query-key").credential {
        Credential::ApiKey {
            placement: KeyPlacement::Query { param },
            key,
        } => {
            assert_eq!(param, "key");
            assert_eq!(key.expose(), "sk-query");
        }
        other => panic!("query api key: {other:?}"),
    }
    match &provider_of(a, "resource://bearer").credential {
        Credential::Bearer {
            header,
            scheme,
            token,
        } => {
            assert_eq!(header, http::header::AUTHORIZATION);
            assert_eq!(scheme, "Bearer");
            assert_eq!(token.expose(), "tok-1");
        }
        other => panic!("bearer: {other:?}"),
    }
    match &provider_of(a, "resource://bearer-custom").credential {
        Credential::Bearer {
            header,
            scheme,
            token,
        } => {
            assert_eq!(header.as_str(), "x-token");
            assert_eq!(scheme, "Token");
            assert_eq!(token.expose(), "tok-2");
        }
        other => panic!("custom bearer: {other:?}"),
    }
    match &provider_of(a, "resource://basic").credential {
        Credential::Basic { value } => {
            let expected = base64::engine::general_purpose::STANDARD.encode("alice:pw");
            assert_eq!(value.expose(), format!("Basic {expected}"));
        }
        other => panic!("basic: {other:?}"),
    }
    let oauth = match &provider_of(a, "resource://oauth").credential {
        Credential::OAuthClientCredentials(client) => client.clone(),
        other => panic!("oauth: {other:?}"),
    };
    assert_eq!(
        oauth.token_endpoint.as_str(),
        "https://auth.example.com/token"
    );
    assert_eq!(oauth.client_id, "cid");
    assert_eq!(oauth.client_secret.as_ref().map(|s| s.expose()), Some("cs"));
    assert_eq!(oauth.client_auth_method, "client_secret_basic");
    assert_eq!(oauth.scopes, ["a", "b"]);
    assert_eq!(oauth.audience.as_deref(), Some("aud"));
    assert_eq!(oauth.resource, None);
    assert_eq!(oauth.token_params, [("tenant".to_owned(), "t1".to_owned())]);
    assert_eq!(oauth.header, http::header::AUTHORIZATION);
    assert_eq!(oauth.scheme, "DPoP");
    assert!(oauth.scheme_configured);
    assert_eq!(oauth.fingerprint.len(), 64);
    assert_eq!(
        provider_of(a, "resource://oauth").auth_mode(),
        "provider_oauth"
    );
    let oauth_2 = match &provider_of(a, "resource://oauth-2").credential {
        Credential::OAuthClientCredentials(client) => client.clone(),
        other => panic!("oauth-2: {other:?}"),
    };
    assert_ne!(
        oauth.fingerprint, oauth_2.fingerprint,
        "the secret digest is in the fingerprint"
    );
    match &provider_of(a, "resource://oauth-none").credential {
        Credential::OAuthClientCredentials(client) => {
            assert!(client.client_secret.is_none());
            assert_eq!(client.client_auth_method, "none");
            assert_eq!(client.scheme, "Bearer");
            assert!(!client.scheme_configured);
        }
        other => panic!("oauth none: {other:?}"),
    }

    assert_eq!(
        unavailable(a, "resource://pkjwt"),
        "private_key_jwt is not supported by this gateway yet"
    );
    assert_eq!(
        unavailable(a, "resource://authcode"),
        "authorization-code grants are not supported by this gateway yet"
    );
    let wrong = unavailable(a, "resource://wrong-kek");
    assert!(wrong.contains("cannot be opened"), "{wrong}");
    assert!(!wrong.contains("sk-other"));
    assert!(unavailable(a, "resource://no-secret").contains("no sealed secret document"));
    assert!(unavailable(a, "resource://bad-header").contains("auth_header"));
    assert_eq!(
        unavailable(a, "resource://archived-provider"),
        "the provider is archived"
    );

    // Policy: zone-a's bundle, deny-all shared by the zones without a binding.
    assert_eq!(
        bundle(a).provenance().policy_set_version_id,
        format!("{ZONE}-main-psv")
    );
    let deny_b = bundle(b);
    let deny_c = bundle(zone(&snapshot, "zone-c"));
    assert!(deny_b.provenance().policy_set_version_id.is_empty());
    assert!(Arc::ptr_eq(deny_b, deny_c));
    Ok(())
}

#[tokio::test]
async fn bundles_are_reused_and_a_failing_version_keeps_the_previous_one() -> anyhow::Result<()> {
    tests_harness::init_logs();
    let db = TestDb::migrated().await?;
    let kek = kek(7);
    let mut p = Provision::open(&db).await?;
    for zone in [ZONE, "zone-b", "zone-broken"] {
        p.zone(zone).await?;
    }
    p.activate_policy(ZONE, "main", POLICY).await?;
    p.activate_policy(
        "zone-broken",
        "broken",
        "package caracal.authz\nthis is not rego {",
    )
    .await?;
    let pool = db.service_pool(ServiceRole::Gateway).await?;
    let config = config(kek);

    let first = build::build(&pool, &config, None).await?;
    let second = build::build(&pool, &config, Some(&first)).await?;
    let (a1, a2) = (zone(&first, ZONE), zone(&second, ZONE));
    assert!(
        Arc::ptr_eq(bundle(a1), bundle(a2)),
        "an unchanged version is not recompiled"
    );
    assert!(
        Arc::ptr_eq(
            bundle(zone(&first, "zone-b")),
            bundle(zone(&second, "zone-b"))
        ),
        "the deny-all bundle is shared across builds"
    );
    match &zone(&second, "zone-broken").policy {
        PolicySlot::Failed(reason) => assert!(!reason.is_empty()),
        PolicySlot::Ready(_) => {
            panic!("a version that does not build and has no predecessor fails")
        }
    }

    // zone-a moves to a broken version: the previous bundle stays.
    p.activate_policy(ZONE, "broken", "package caracal.authz\nthis is not rego {")
        .await?;
    let third = build::build(&pool, &config, Some(&second)).await?;
    assert!(Arc::ptr_eq(bundle(a2), bundle(zone(&third, ZONE))));
    // Without a previous snapshot there is nothing to keep.
    assert!(matches!(
        zone(&build::build(&pool, &config, None).await?, ZONE).policy,
        PolicySlot::Failed(_)
    ));

    // zone-a moves to a new good version: it is compiled.
    p.activate_policy(ZONE, "next", POLICY).await?;
    let fourth = build::build(&pool, &config, Some(&third)).await?;
    let next = bundle(zone(&fourth, ZONE));
    assert!(!Arc::ptr_eq(bundle(a2), next));
    assert_eq!(
        next.provenance().policy_set_version_id,
        format!("{ZONE}-next-psv")
    );
    Ok(())
}

#[tokio::test]
async fn current_revision_moves_when_a_snapshot_table_changes() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let mut p = Provision::open(&db).await?;
    p.zone(ZONE).await?;
    let pool = db.service_pool(ServiceRole::Gateway).await?;
    let before = build::current_revision(&pool).await?;
    p.application(ZONE, "app-1", "s", &[]).await?;
    let after = build::current_revision(&pool).await?;
    assert!(after > before, "{after} > {before}");
    let snapshot = build::build(&pool, &config(kek(7)), None).await?;
    assert_eq!(snapshot.revision, after);
    Ok(())
}

/// A `gateway_plugins` row holding the component at `path`.
async fn plugin_row(p: &mut Provision, id: &str, world: &str, path: &str, archived: bool) {
    let component = tests_fixtures::read(path).unwrap();
    sqlx::query(
        "INSERT INTO caracal.gateway_plugins \
           (id, zone_id, name, world, component_sha256, component, archived_at) \
         VALUES ($1, $2, $1, $3, sha256($4), $4, CASE WHEN $5 THEN now() END)",
    )
    .bind(id)
    .bind(ZONE)
    .bind(world)
    .bind(&component)
    .bind(archived)
    .execute(p.conn())
    .await
    .unwrap();
}

/// A binding of plugin `plugin` to resource `r-<resource>`.
async fn plugin_binding(
    p: &mut Provision,
    resource: &str,
    plugin: &str,
    hook: &str,
    position: i16,
    config: Value,
) {
    sqlx::query(
        "INSERT INTO caracal.resource_plugin_bindings \
           (id, zone_id, resource_id, plugin_id, hook, position, mode, config_json) \
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $5 = 'injector' THEN 'augment' END, $7)",
    )
    .bind(format!("rpb-{resource}-{plugin}"))
    .bind(ZONE)
    .bind(format!("r-{resource}"))
    .bind(plugin)
    .bind(hook)
    .bind(position)
    .bind(config)
    .execute(p.conn())
    .await
    .unwrap();
}

#[tokio::test]
async fn plugins_are_compiled_once_configured_per_binding_and_fail_closed_when_unusable()
-> anyhow::Result<()> {
    use gateway_plugin_host::{HostConfig, PluginHost};
    use gateway_state::{PluginHook, PluginState};

    let db = TestDb::migrated().await?;
    let mut p = Provision::open(&db).await?;
    p.zone(ZONE).await?;
    provider(&mut p, &kek(7), "prv-none", "none", json!({}), None).await;
    for name in ["guarded", "archived", "refused", "injected"] {
        resource(&mut p, name, "prv-none").await;
    }
    plugin_row(
        &mut p,
        "plg-allow",
        "authorizer",
        tests_fixtures::FIXTURE_ALLOW,
        false,
    )
    .await;
    plugin_row(
        &mut p,
        "plg-old",
        "authorizer",
        tests_fixtures::FIXTURE_DENY,
        true,
    )
    .await;
    plugin_row(
        &mut p,
        "plg-echo",
        "credential-injector",
        tests_fixtures::FIXTURE_ECHO_INJECTOR,
        false,
    )
    .await;
    plugin_binding(&mut p, "guarded", "plg-allow", "authorizer", 0, json!({})).await;
    plugin_binding(&mut p, "archived", "plg-old", "authorizer", 0, json!({})).await;
    plugin_binding(
        &mut p,
        "refused",
        "plg-echo",
        "injector",
        0,
        json!({"digest": "yes"}),
    )
    .await;
    plugin_binding(
        &mut p,
        "injected",
        "plg-echo",
        "injector",
        0,
        json!({"digest": true}),
    )
    .await;

    let pool = db.service_pool(ServiceRole::Gateway).await?;
    let host = PluginHost::start(HostConfig {
        pooling: false,
        ..HostConfig::default()
    })?;
    let with_host = BuildConfig {
        plugins: Some(host),
        ..config(kek(7))
    };
    let first = build::build(&pool, &with_host, None).await?;
    let zone_state = zone(&first, ZONE);
    let plugin =
        |resource: &str| zone_state.resources[&format!("resource://{resource}")].plugins[0].clone();

    let guarded = plugin("guarded");
    assert_eq!(guarded.hook, PluginHook::Authorizer);
    assert_eq!(guarded.name, "plg-allow");
    let PluginState::Ready {
        plugin: compiled, ..
    } = &guarded.state
    else {
        panic!("not ready: {:?}", guarded.state);
    };
    let injected = plugin("injected");
    assert!(
        injected.needs_body_sha256(),
        "configure asked for the digest"
    );
    for (resource, cause) in [("archived", "archived"), ("refused", "configure failed")] {
        match &plugin(resource).state {
            PluginState::Failed(text) => assert!(text.contains(cause), "{resource}: {text}"),
            PluginState::Ready { .. } => panic!("{resource} must fail closed"),
        }
    }

    // A rebuild reuses the compiled component (no recompilation, same Arc).
    let second = build::build(&pool, &with_host, Some(&first)).await?;
    let again = zone(&second, ZONE).resources["resource://guarded"].plugins[0].clone();
    let PluginState::Ready { plugin: reused, .. } = &again.state else {
        panic!("not ready after a rebuild");
    };
    assert!(Arc::ptr_eq(compiled, reused));

    // Without a plugin host every bound plugin fails closed instead of being skipped.
    let without = build::build(&pool, &config(kek(7)), None).await?;
    let bound = &zone(&without, ZONE).resources["resource://guarded"].plugins[0];
    assert!(matches!(&bound.state, PluginState::Failed(text) if text.contains("no plugin host")));
    Ok(())
}
