//! `caracal doctor` against real Postgres and Redis: a healthy deployment passes, and each
//! seeded fault (wrong ZONE_KEK, wrong AUDIT_HMAC_KEY, missing rows, a dropped partition,
//! an unroutable resource, a missing revision row, a gateway behind the binding revision,
//! stalled and dead outbox rows, an unannounced revocation, dead letters, an old replay
//! segment) fails or warns the check that explains it, with the exit status to match.
//!
//! Doctor reads the whole Redis keyspace it is given (`caracal:instances:*`, the streams),
//! so these tests use Redis database 3 of their own and run one at a time.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use control_crypto::{HmacKey, KekRing, SealContext};
use control_ops::{
    ExitStatus, OpsError,
    doctor::{DoctorOptions, run},
    migrate::MigrateArgs,
};
use serde_json::Value;
use tests_harness::{
    TestDb,
    audit::{AuditFixture, PRODUCER_KEY_HEX, emit_raw, event_data, producer_key},
    provision::Provision,
    sts::isolated_redis,
};
use tokio::sync::{Mutex, MutexGuard};

/// The Redis database of these tests (see the module docs).
const REDIS_DB: u8 = 3;
/// The deployment's ZONE_KEK.
const KEK: &str = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c";
/// A KEK the deployment never used.
const OTHER_KEK: &str = "9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d";
/// An audit key the ledger never used.
const OTHER_AUDIT_KEY: &str = "6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e";
const ZONE: &str = "doctor-zone";

/// The checks issue 9 requires (its seven items; the fourth is two checks), each of which a
/// healthy deployment passes.
const REQUIRED: [&str; 8] = [
    "kek.match",
    "audit.chain",
    "gateway.bindings",
    "revocation.state",
    "outbox",
    "audit.stream",
    "replay.backlog",
    "db.migrations",
];

fn redis_lock() -> &'static Mutex<()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
}

/// A migrated database with one zone (sealed KEK canary and signing key, a bound resource),
/// an empty Redis database with the ledger's group, and doctor's environment.
struct Deployment {
    db: TestDb,
    redis_url: String,
    env: HashMap<String, String>,
    replay: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Deployment {
    async fn healthy() -> anyhow::Result<Self> {
        let serial = redis_lock().lock().await;
        let db = TestDb::migrated().await?;
        let redis_url = isolated_redis(REDIS_DB).await?;

        // `caracal migrate` with ZONE_KEK seals the canary.
        let owner_env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url()),
            ("ZONE_KEK".to_owned(), KEK.to_owned()),
        ]);
        let mut sink = Vec::new();
        let migrated = control_ops::migrate::run(
            &MigrateArgs::default(),
            &|name: &str| owner_env.get(name).cloned(),
            &mut sink,
        )
        .await?;
        assert_eq!(migrated, ExitStatus::Success);

        let mut p = Provision::open(&db).await?;
        p.zone(ZONE).await?;
        seal_signing_key(&mut p, ZONE, "kid-1", KEK).await?;
        p.provider_none(ZONE, "prov-1").await?;
        p.resource(
            ZONE,
            "res-1",
            "resource://crm",
            &["crm:read"],
            Some("http://127.0.0.1:9/"),
            "prov-1",
        )
        .await?;
        p.exec(
            "INSERT INTO gateway_resource_bindings (zone_id, resource_identifier, resource_id) \
             VALUES ('doctor-zone', 'resource://crm', 'res-1')",
        )
        .await?;
        // The dispatchers of a healthy deployment published the revision bumps.
        p.exec(
            "UPDATE event_outbox SET status = 'published', published_at = now() WHERE status = 'pending'",
        )
        .await?;

        let mut redis = redis_conn(&redis_url).await?;
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("caracal.audit.events")
            .arg("audit-ingestor")
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut redis)
            .await?;

        let env = HashMap::from([
            ("DATABASE_URL".to_owned(), db.url_as("caracal_maintenance")),
            ("REDIS_URL".to_owned(), redis_url.clone()),
            ("ZONE_KEK".to_owned(), KEK.to_owned()),
            ("AUDIT_HMAC_KEY".to_owned(), PRODUCER_KEY_HEX.to_owned()),
        ]);
        Ok(Self {
            db,
            redis_url,
            env,
            replay: tempfile::tempdir()?,
            _serial: serial,
        })
    }

    fn set(&mut self, name: &str, value: &str) {
        self.env.insert(name.to_owned(), value.to_owned());
    }

    async fn owner(&self) -> anyhow::Result<Provision> {
        Provision::open(&self.db).await
    }

    async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        redis_conn(&self.redis_url).await
    }

    /// Runs doctor with `--json` on the deployment's replay root plus `extra`.
    async fn doctor(&self, extra: &[&Path]) -> anyhow::Result<Report> {
        let mut replay_dirs = vec![self.replay.path().to_path_buf()];
        replay_dirs.extend(extra.iter().map(|p| p.to_path_buf()));
        let options = DoctorOptions {
            replay_dirs,
            json: true,
        };
        let env = self.env.clone();
        let mut out = Vec::new();
        let status = run(&options, &|name: &str| env.get(name).cloned(), &mut out).await?;
        let text = String::from_utf8(out)?;
        let json: Value = serde_json::from_str(&text)?;
        Ok(Report { status, json, text })
    }

    /// Runs doctor with the human output.
    async fn doctor_human(&self) -> anyhow::Result<(ExitStatus, String)> {
        let options = DoctorOptions {
            replay_dirs: vec![self.replay.path().to_path_buf()],
            json: false,
        };
        let env = self.env.clone();
        let mut out = Vec::new();
        let status = run(&options, &|name: &str| env.get(name).cloned(), &mut out).await?;
        Ok((status, String::from_utf8(out)?))
    }
}

struct Report {
    status: ExitStatus,
    json: Value,
    text: String,
}

impl Report {
    /// `(status, finding, fix)` of check `id`.
    fn check(&self, id: &str) -> (String, String, String) {
        let found = self.json["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["id"] == id));
        assert!(found.is_some(), "no check {id} in {}", self.text);
        let check = found.unwrap_or(&Value::Null);
        (
            check["status"].as_str().unwrap_or_default().to_owned(),
            check["finding"].as_str().unwrap_or_default().to_owned(),
            check["fix"].as_str().unwrap_or_default().to_owned(),
        )
    }

    fn status_of(&self, id: &str) -> String {
        self.check(id).0
    }
}

async fn redis_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// A zone signing key row sealed under `kek_hex` (the bytes are not a real key: doctor only
/// opens them).
async fn seal_signing_key(
    p: &mut Provision,
    zone: &str,
    kid: &str,
    kek_hex: &str,
) -> anyhow::Result<()> {
    let ring = KekRing::from_lookup(|name: &str| (name == "ZONE_KEK").then(|| kek_hex.to_owned()))?;
    let sealed = ring.seal(
        &SealContext {
            table: "secrets",
            column: "ciphertext",
            zone_id: zone,
            row_id: kid,
        },
        b"pkcs8 bytes stand-in",
    )?;
    sqlx::query(
        "INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, version, status, public_jwk) \
         VALUES ($1, $2, $2, 'zone_signing_key', 'token', $3, $4, $5, \
                 (SELECT COALESCE(max(version), 0) + 1 FROM secrets WHERE zone_id = $2), 'active', '{}')",
    )
    .bind(kid)
    .bind(zone)
    .bind(&sealed.ciphertext)
    .bind(sealed.nonce.as_slice())
    .bind(sealed.dek_id.as_str())
    .execute(p.conn())
    .await?;
    Ok(())
}

fn dek_id(kek_hex: &str) -> anyhow::Result<String> {
    let ring = KekRing::from_lookup(|name: &str| (name == "ZONE_KEK").then(|| kek_hex.to_owned()))?;
    Ok(ring.current().dek_id().as_str().to_owned())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A segment file in `<root>/<instance>/` written `age` ago.
fn segment(root: &Path, instance: &str, age: Duration) -> anyhow::Result<PathBuf> {
    let dir = root.join(instance);
    std::fs::create_dir_all(&dir)?;
    let written = now_ms() - i64::try_from(age.as_millis())?;
    let path = dir.join(format!("seg-{written:013}-000000.ndjson"));
    std::fs::write(
        &path,
        b"{\"caracal_replay\":1,\"service\":\"gateway\",\"instance\":\"gw-0\",\"created_at\":\"2026-01-01T00:00:00.000000Z\"}\n",
    )?;
    Ok(path)
}

#[tokio::test]
async fn a_healthy_deployment_passes_every_required_check() -> anyhow::Result<()> {
    let deployment = Deployment::healthy().await?;
    let report = deployment.doctor(&[]).await?;
    for id in REQUIRED {
        let (status, finding, _) = report.check(id);
        assert_eq!(status, "ok", "{id}: {finding}\n{}", report.text);
    }
    assert_eq!(report.status, ExitStatus::Success, "{}", report.text);
    assert_eq!(report.json["failed"], 0);
    let (_, finding, _) = report.check("kek.match");
    assert!(finding.contains(&dek_id(KEK)?), "{finding}");
    assert!(
        finding.contains("1 zone signing key(s) decrypt"),
        "{finding}"
    );
    for check in report.json["checks"].as_array().into_iter().flatten() {
        assert!(
            check["status"] == "ok" || !check["fix"].is_null(),
            "{check}"
        );
    }

    let (status, human) = deployment.doctor_human().await?;
    assert_eq!(status, ExitStatus::Success);
    assert!(human.starts_with("caracal doctor: "), "{human}");
    assert!(human.contains("ok    kek.match"), "{human}");
    // Key ids are shown; keys never.
    for secret in [KEK, PRODUCER_KEY_HEX] {
        assert!(!human.contains(secret) && !report.text.contains(secret));
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_zone_kek_fails_kek_match_naming_both_key_ids() -> anyhow::Result<()> {
    let mut deployment = Deployment::healthy().await?;
    deployment.set("ZONE_KEK", OTHER_KEK);
    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("kek.match");
    assert_eq!(status, "fail", "{}", report.text);
    assert!(finding.contains("zone_kek_mismatch"), "{finding}");
    assert!(finding.contains(&dek_id(KEK)?), "{finding}");
    assert!(finding.contains(&dek_id(OTHER_KEK)?), "{finding}");
    assert!(
        fix.contains("ZONE_KEK_PREVIOUS") && fix.contains("caracal keys rewrap"),
        "{fix}"
    );
    assert_eq!(report.status, ExitStatus::Findings);
    assert_eq!(report.status.code(), 1);
    assert!(!report.text.contains(OTHER_KEK) && !report.text.contains(KEK));

    // During a rotation the old key as ZONE_KEK_PREVIOUS opens everything, and the rows
    // still under it are a warning that names the rewrap.
    deployment.set("ZONE_KEK_PREVIOUS", KEK);
    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("kek.match");
    assert_eq!(status, "warn", "{finding}");
    assert!(finding.contains("ZONE_KEK_PREVIOUS"), "{finding}");
    assert!(fix.contains("caracal keys rewrap"), "{fix}");

    // A zone key sealed under a third key is named with its id.
    deployment.env.remove("ZONE_KEK_PREVIOUS");
    deployment.set("ZONE_KEK", KEK);
    let mut p = deployment.owner().await?;
    p.zone("other-zone").await?;
    seal_signing_key(&mut p, "other-zone", "kid-2", OTHER_KEK).await?;
    let report = deployment.doctor(&[]).await?;
    let (status, finding, _) = report.check("kek.match");
    assert_eq!(status, "fail");
    assert!(
        finding.contains(&format!("are under {}", dek_id(OTHER_KEK)?)),
        "{finding}"
    );
    Ok(())
}

#[tokio::test]
async fn a_wrong_audit_hmac_key_and_missing_rows_fail_audit_chain() -> anyhow::Result<()> {
    let mut deployment = Deployment::healthy().await?;
    // Three events chained by a real ledger (on a Redis database of its own).
    let ledger = AuditFixture::start(&deployment.db).await?;
    let entries: Vec<(String, String)> = (1..=3)
        .map(|n| {
            let id = format!("doctor-event-{n}");
            let data = event_data(ZONE, &id, serde_json::json!({}));
            (id, data)
        })
        .collect();
    emit_raw(&ledger.redis, &entries, Some(&producer_key()?)).await?;
    tests_harness::audit::await_rows(&deployment.db, 3, Duration::from_secs(20)).await?;
    drop(ledger.stop().await);

    let report = deployment.doctor(&[]).await?;
    let (status, finding, _) = report.check("audit.chain");
    assert_eq!(status, "ok", "{finding}");
    assert!(
        finding.contains("3 row(s)") && finding.contains("(3 HMACs)"),
        "{finding}"
    );

    let chained_under = HmacKey::from_hex(PRODUCER_KEY_HEX)?
        .chain_key_id()
        .to_owned();
    let configured = HmacKey::from_hex(OTHER_AUDIT_KEY)?
        .chain_key_id()
        .to_owned();
    deployment.set("AUDIT_HMAC_KEY", OTHER_AUDIT_KEY);
    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("audit.chain");
    assert_eq!(status, "fail", "{finding}");
    assert!(finding.contains("wrong AUDIT_HMAC_KEY"), "{finding}");
    assert!(
        finding.contains(&chained_under) && finding.contains(&configured),
        "{finding}"
    );
    assert!(fix.contains(&chained_under), "{fix}");
    assert_eq!(report.status, ExitStatus::Findings);
    assert!(!report.text.contains(OTHER_AUDIT_KEY) && !report.text.contains(PRODUCER_KEY_HEX));

    // A row removed from the middle of the chain (as a partial restore would).
    deployment.set("AUDIT_HMAC_KEY", PRODUCER_KEY_HEX);
    let mut p = deployment.owner().await?;
    p.exec(
        "BEGIN; SET LOCAL caracal.audit_partition_move = 'on'; \
         DELETE FROM audit_events WHERE zone_id = 'doctor-zone' AND chain_seq = 2; COMMIT",
    )
    .await?;
    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("audit.chain");
    assert_eq!(status, "fail", "{finding}");
    assert!(finding.contains("missing rows"), "{finding}");
    assert!(
        finding.contains("zone doctor-zone chain_seq 3"),
        "{finding}"
    );
    assert!(fix.contains("caracal audit verify"), "{fix}");
    Ok(())
}

#[tokio::test]
async fn a_dropped_future_partition_fails_audit_chain_and_db_migrations() -> anyhow::Result<()> {
    let deployment = Deployment::healthy().await?;
    let mut p = deployment.owner().await?;
    let furthest: String = sqlx::query_scalar(
        "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months', '\"audit_events_y\"YYYY\"m\"MM')",
    )
    .fetch_one(p.conn())
    .await?;
    p.exec(&format!("DROP TABLE caracal.{furthest}")).await?;
    // An event dated past the partitions lands in the default partition.
    p.exec(
        "INSERT INTO audit_events (id, zone_id, event_type, occurred_at, content_sha256, chain_seq) \
         VALUES ('far-future', 'elsewhere', 'token_exchange', '2199-01-01T00:00:00Z', decode(repeat('ab', 32), 'hex'), 1)",
    )
    .await?;

    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("audit.chain");
    assert_eq!(status, "fail", "{finding}");
    assert!(
        finding.contains(&format!("missing audit partition(s) {furthest}")),
        "{finding}"
    );
    assert!(
        finding.contains("1 row(s) are in audit_events_default"),
        "{finding}"
    );
    assert!(fix.contains("caracal migrate"), "{fix}");
    let (status, finding, _) = report.check("db.migrations");
    assert_eq!(status, "fail");
    assert!(finding.contains(&furthest), "{finding}");
    assert_eq!(report.status, ExitStatus::Findings);
    Ok(())
}

#[tokio::test]
async fn an_unroutable_resource_and_a_missing_revision_row_fail_gateway_bindings()
-> anyhow::Result<()> {
    let deployment = Deployment::healthy().await?;
    let mut p = deployment.owner().await?;
    p.resource(
        ZONE,
        "res-2",
        "resource://billing",
        &["billing:read"],
        Some("http://127.0.0.1:9/"),
        "prov-1",
    )
    .await?;
    p.exec("UPDATE event_outbox SET status = 'published', published_at = now() WHERE status = 'pending'")
        .await?;
    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("gateway.bindings");
    assert_eq!(status, "fail", "{finding}");
    assert!(
        finding.contains("doctor-zone/resource://billing (no binding)"),
        "{finding}"
    );
    assert!(!finding.contains("resource://crm"), "{finding}");
    assert!(fix.contains("upstream_url"), "{fix}");

    p.exec("DELETE FROM gateway_binding_revision").await?;
    let report = deployment.doctor(&[]).await?;
    let (status, finding, _) = report.check("gateway.bindings");
    assert_eq!(status, "fail");
    assert!(
        finding.contains("gateway_binding_revision has no row"),
        "{finding}"
    );
    assert_eq!(report.status, ExitStatus::Findings);
    Ok(())
}

#[tokio::test]
async fn a_gateway_behind_the_binding_revision_is_a_stale_binding_revision() -> anyhow::Result<()> {
    let deployment = Deployment::healthy().await?;
    let revision: i64 = sqlx::query_scalar("SELECT version FROM caracal.gateway_binding_revision")
        .fetch_one(deployment.owner().await?.conn())
        .await?;
    let mut redis = deployment.redis().await?;
    let stream = "caracal.gateway.bindings.invalidate";
    let published = format!("{}-0", now_ms() - 120_000);
    redis::cmd("XADD")
        .arg(stream)
        .arg(&published)
        .arg("zone_id")
        .arg("*")
        .arg("revision")
        .arg(revision.to_string())
        .query_async::<String>(&mut redis)
        .await?;
    // gw-stale's group was never delivered the entry; gw-fresh's starts after it.
    for (instance, start) in [("gw-stale", "0"), ("gw-fresh", "$")] {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(format!("gateway-bindings:{instance}"))
            .arg(start)
            .query_async::<()>(&mut redis)
            .await?;
        redis::cmd("ZADD")
            .arg("caracal:instances:gateway")
            .arg(now_ms())
            .arg(instance)
            .query_async::<()>(&mut redis)
            .await?;
    }

    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("gateway.bindings");
    assert_eq!(status, "fail", "{finding}");
    assert!(
        finding.contains("stale binding revision: live gateway gw-stale"),
        "{finding}"
    );
    assert!(
        finding.contains(&format!("revision {revision}")),
        "{finding}"
    );
    assert!(!finding.contains("gw-fresh"), "{finding}");
    assert!(fix.contains("restart"), "{fix}");
    // Neither gateway reads the revocation streams.
    let (status, finding, _) = report.check("revocation.state");
    assert_eq!(status, "fail");
    assert!(
        finding.contains("no group gateway-revocation:gw-stale"),
        "{finding}"
    );
    assert_eq!(report.status, ExitStatus::Findings);

    // Once it reads the entry, it is current.
    redis::cmd("XGROUP")
        .arg("SETID")
        .arg(stream)
        .arg("gateway-bindings:gw-stale")
        .arg("$")
        .query_async::<()>(&mut redis)
        .await?;
    let report = deployment.doctor(&[]).await?;
    let (status, finding, _) = report.check("gateway.bindings");
    assert_eq!(status, "ok", "{finding}");
    Ok(())
}

#[tokio::test]
async fn stalled_and_dead_outbox_rows_and_an_unannounced_revocation_fail() -> anyhow::Result<()> {
    let deployment = Deployment::healthy().await?;
    let mut p = deployment.owner().await?;
    p.exec(
        "INSERT INTO event_outbox (id, producer, zone_id, topic, dedupe_key, payload_json, created_at, available_at) \
         VALUES ('ob-1', 'sts', 'doctor-zone', 'caracal.keys.invalidate', 'keys:k:created', '{}', now() - interval '10 minutes', now())",
    )
    .await?;
    p.exec(
        "INSERT INTO caracal_outbox (id, producer, zone_id, topic, dedupe_key, payload_json, status, attempts, last_error) \
         VALUES ('ob-2', 'coordinator', 'doctor-zone', 'caracal.sessions.revoke', 'revoke:edge:e-1', '{}', 'dead', 10, 'WRONGTYPE')",
    )
    .await?;
    p.exec(
        "INSERT INTO sessions (id, zone_id, session_type, subject_id, root_id, status, expires_at, revoked_at, revoked_reason) \
         VALUES ('sid-1', 'doctor-zone', 'user', 'alice', 'sid-1', 'revoked', now() + interval '1 hour', now() - interval '5 minutes', 'requested')",
    )
    .await?;

    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("outbox");
    assert_eq!(status, "fail", "{finding}");
    assert!(
        finding.contains("1 dead outbox row(s) on caracal.sessions.revoke in caracal_outbox"),
        "{finding}"
    );
    assert!(
        finding.contains("1 pending outbox row(s) on caracal.keys.invalidate in event_outbox, the oldest waiting 10 min"),
        "{finding}"
    );
    assert!(fix.contains("UPDATE caracal.caracal_outbox"), "{fix}");
    assert!(fix.contains("the API and the STS run"), "{fix}");

    let (status, finding, _) = report.check("revocation.state");
    assert_eq!(status, "fail", "{finding}");
    assert!(finding.contains("1 dead revocation row(s)"), "{finding}");
    assert!(
        finding.contains("doctor-zone/sid-1 (no outbox row)"),
        "{finding}"
    );
    assert!(!finding.contains("caracal.keys.invalidate"), "{finding}");
    assert_eq!(report.status, ExitStatus::Findings);

    // Announced: the record is no longer reported.
    p.exec(
        "INSERT INTO event_outbox (id, producer, zone_id, topic, dedupe_key, payload_json, status, published_at) \
         VALUES ('ob-3', 'api', 'doctor-zone', 'caracal.sessions.revoke', 'revoke:record:sid-1', '{}', 'published', now())",
    )
    .await?;
    let report = deployment.doctor(&[]).await?;
    let (_, finding, _) = report.check("revocation.state");
    assert!(!finding.contains("sid-1"), "{finding}");
    Ok(())
}

#[tokio::test]
async fn dead_letters_and_a_missing_ledger_group_fail_audit_stream() -> anyhow::Result<()> {
    let deployment = Deployment::healthy().await?;
    let mut redis = deployment.redis().await?;
    for reason in ["pg_permanent_error:23514", "invalid_signature"] {
        redis::cmd("XADD")
            .arg("caracal.audit.events.dlq")
            .arg("*")
            .arg("reason")
            .arg(reason)
            .arg("src_entry_id")
            .arg("1-0")
            .arg("src_id")
            .arg("e-1")
            .arg("received_at")
            .arg(now_ms())
            .arg("deliveries")
            .arg(1)
            .query_async::<String>(&mut redis)
            .await?;
    }
    let report = deployment.doctor(&[]).await?;
    let (status, finding, fix) = report.check("audit.stream");
    assert_eq!(status, "fail", "{finding}");
    assert!(
        finding.contains("2 dead letter(s) on caracal.audit.events.dlq"),
        "{finding}"
    );
    assert!(finding.contains("1 retryable"), "{finding}");
    assert!(finding.contains("pg_permanent_error: 1"), "{finding}");
    assert!(fix.contains("caracal audit dlq list"), "{fix}");
    assert_eq!(report.status, ExitStatus::Findings);

    redis::cmd("DEL")
        .arg("caracal.audit.events.dlq")
        .query_async::<()>(&mut redis)
        .await?;
    redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("caracal.audit.events")
        .arg("audit-ingestor")
        .query_async::<()>(&mut redis)
        .await?;
    let report = deployment.doctor(&[]).await?;
    let (status, finding, _) = report.check("audit.stream");
    assert_eq!(status, "fail");
    assert!(finding.contains("has no group audit-ingestor"), "{finding}");
    Ok(())
}

#[tokio::test]
async fn replay_backlog_warns_and_an_old_segment_fails() -> anyhow::Result<()> {
    let deployment = Deployment::healthy().await?;
    let young = tempfile::tempdir()?;
    segment(young.path(), "sts-sts-0", Duration::from_secs(30))?;
    let report = deployment.doctor(&[young.path()]).await?;
    let (status, finding, _) = report.check("replay.backlog");
    assert_eq!(status, "warn", "{finding}");
    assert!(finding.contains("1 segment(s) (0 open)"), "{finding}");
    assert_eq!(report.status, ExitStatus::Success);

    let old = tempfile::tempdir()?;
    segment(old.path(), "gateway-gw-0", Duration::from_secs(20 * 60))?;
    std::fs::create_dir_all(old.path().join("quarantine"))?;
    std::fs::write(old.path().join("quarantine/line-1"), b"{broken\n")?;
    let report = deployment.doctor(&[young.path(), old.path()]).await?;
    let (status, finding, fix) = report.check("replay.backlog");
    assert_eq!(status, "fail", "{finding}");
    assert!(
        finding.contains("the oldest 20 min old: replay is stuck"),
        "{finding}"
    );
    assert!(finding.contains("1 file(s) in quarantine/"), "{finding}");
    assert!(fix.contains("audit.stream"), "{fix}");
    assert_eq!(report.status, ExitStatus::Findings);

    let missing = young.path().join("nowhere");
    let report = deployment.doctor(&[&missing]).await?;
    assert_eq!(report.status_of("replay.backlog"), "fail");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_redis_fails_its_checks_and_an_unreachable_database_exits_2()
-> anyhow::Result<()> {
    let mut deployment = Deployment::healthy().await?;
    deployment.set("REDIS_URL", "redis://127.0.0.1:1/0");
    let report = deployment.doctor(&[]).await?;
    for id in [
        "audit.stream",
        "redis.config",
        "gateway.bindings",
        "revocation.state",
    ] {
        let (status, finding, _) = report.check(id);
        assert_eq!(status, "fail", "{id}: {finding}");
        assert!(
            finding.contains("Redis (REDIS_URL) cannot be reached"),
            "{id}: {finding}"
        );
    }
    assert_eq!(report.status_of("kek.match"), "ok");
    assert_eq!(report.status, ExitStatus::Findings);

    deployment.set(
        "DATABASE_URL",
        "postgres://caracal_maintenance:not-printed@127.0.0.1:1/caracal",
    );
    let env = deployment.env.clone();
    let mut out = Vec::new();
    let outcome = run(
        &DoctorOptions::default(),
        &|name: &str| env.get(name).cloned(),
        &mut out,
    )
    .await;
    let Err(error) = outcome else {
        panic!(
            "doctor ran without a database: {}",
            String::from_utf8_lossy(&out)
        );
    };
    assert!(matches!(error, OpsError::Unreachable(_)), "{error}");
    assert_eq!(error.exit_status().code(), 2);
    assert!(!error.to_string().contains("not-printed"), "{error}");
    Ok(())
}
