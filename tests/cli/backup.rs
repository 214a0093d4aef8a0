//! `caracal backup create | restore | keygen` through the binary, against real databases:
//! a provisioned source is backed up, restored into a new database of the same cluster,
//! and compared row for row; every refusal (the source as target, a non-empty target, the
//! same cluster without consent, a wrong key, a tampered archive, an ambiguous seal) exits
//! non-zero with one line naming the cause.

use std::path::Path;

use tests_harness::{TestDb, gateway::KEK_HEX, provision::Provision};

use super::{assert_one_line_error, caracal, stderr, stdout};

const AUDIT_KEY: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const COORDINATOR_TOKEN: &str = "coordinator-operator-token-0123456789abcdef";
const STREAMS_KEY: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
/// The source zone's active policy: its activation must survive the restore.
const POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app"}
grants := {
  "resource://crm": {"application": "agent", "roles": {"reader": ["read"]}}
}
"#;

/// Counts of the tables a provisioned source has rows in, read from `db`.
async fn counts(db: &TestDb) -> anyhow::Result<Vec<(String, i64)>> {
    let mut conn = db.admin().await?;
    let mut out = Vec::new();
    for table in [
        "zones",
        "applications",
        "providers",
        "resources",
        "gateway_resource_bindings",
        "secrets",
        "kek_check",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM caracal.{table}"))
            .fetch_one(&mut conn)
            .await?;
        out.push((table.to_owned(), n));
    }
    Ok(out)
}

async fn provisioned_source() -> anyhow::Result<TestDb> {
    let db = TestDb::create().await?;
    let out = caracal(
        &["migrate"],
        &[("DATABASE_URL", &db.url()), ("ZONE_KEK", KEK_HEX)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut p = Provision::open(&db).await?;
    p.zone("acme").await?;
    p.application("acme", "agent-app", "agent-secret", &[])
        .await?;
    p.provider_with_secret(
        "acme",
        "p-key",
        "api_key",
        &serde_json::json!({"header": "x-api-key"}),
        Some(&serde_json::json!({"api_key": "sk-live-restore-me"})),
    )
    .await?;
    p.resource(
        "acme",
        "crm",
        "resource://crm",
        &["crm:read"],
        Some("http://127.0.0.1:9/"),
        "p-key",
    )
    .await?;
    p.activate_policy("acme", "main", POLICY).await?;
    // The binding the admin API creates with a resource's upstream.
    p.exec(
        "INSERT INTO gateway_resource_bindings (zone_id, resource_identifier, resource_id)
         VALUES ('acme', 'resource://crm', 'crm')",
    )
    .await?;
    Ok(db)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_backup_restores_into_a_new_database_with_its_secrets_and_replay_segments()
-> anyhow::Result<()> {
    let source = provisioned_source().await?;
    let work = tempfile::tempdir()?;
    let key = work.path().join("backup.key");
    let archive = work.path().join("caracal.backup");
    let replay = work.path().join("replay");
    std::fs::create_dir_all(replay.join("gateway-gw-0"))?;
    write(
        &replay.join("gateway-gw-0/seg-0000000000001-000001.ndjson"),
        "{\"caracal_replay\":1}\n",
    );
    let admin_token = "cat_do-not-print-me-0123456789abcdefghijklmnop";

    let out = caracal(&["backup", "keygen", "--out", key.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recipient = stdout(&out).trim().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions()) & 0o777,
        0o600
    );

    let out = caracal(
        &[
            "backup",
            "create",
            "--out",
            archive.to_str().unwrap(),
            "--recipient",
            &recipient,
            "--include-secrets",
            "--replay-dir",
            replay.to_str().unwrap(),
        ],
        &[
            ("DATABASE_URL", &source.url()),
            ("ZONE_KEK", KEK_HEX),
            ("AUDIT_HMAC_KEY", AUDIT_KEY),
            ("STREAMS_HMAC_KEY", STREAMS_KEY),
            ("CARACAL_ADMIN_TOKEN", admin_token),
            ("CARACAL_COORDINATOR_TOKEN", COORDINATOR_TOKEN),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("backup written"), "{report}");
    assert!(report.contains("secrets included"), "{report}");
    assert!(
        !report.contains(KEK_HEX) && !report.contains(admin_token),
        "{report}"
    );
    // Sealed: neither the secrets nor the provider's sealed rows' plaintext are readable.
    let bytes = std::fs::read(&archive)?;
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    for needle in [
        KEK_HEX.as_bytes(),
        admin_token.as_bytes(),
        b"CREATE TABLE".as_slice(),
    ] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }

    let target = TestDb::create().await?;
    let secrets = work.path().join("secrets");
    let replay_out = work.path().join("replay-out");
    let out = caracal(
        &[
            "backup",
            "restore",
            archive.to_str().unwrap(),
            "--into",
            &target.url(),
            "--identity",
            key.to_str().unwrap(),
            "--allow-same-cluster",
            "--secrets-out",
            secrets.to_str().unwrap(),
            "--replay-out",
            replay_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("into {}", target.name())),
        "{}",
        stdout(&out)
    );
    assert_eq!(counts(&target).await?, counts(&source).await?);
    assert!(counts(&target).await?.iter().all(|(_, n)| *n > 0));

    // The restored schema is this binary's, grants and row-level security included.
    let out = caracal(&["migrate", "--verify"], &[("DATABASE_URL", &target.url())]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // The sealed provider secret still opens under the same KEK.
    let out = caracal(
        &["migrate"],
        &[("DATABASE_URL", &target.url()), ("ZONE_KEK", KEK_HEX)],
    );
    assert!(
        stdout(&out).contains("ZONE_KEK opens the KEK canary"),
        "{}",
        stdout(&out)
    );

    let env = std::fs::read_to_string(secrets.join("runtime.env"))?;
    assert!(env.contains(&format!("ZONE_KEK={KEK_HEX}\n")));
    assert!(env.contains(&format!("CARACAL_ADMIN_TOKEN={admin_token}\n")));
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(secrets.join("runtime.env"))?.permissions()
        ) & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(replay_out.join("gateway-gw-0/seg-0000000000001-000001.ndjson"))?,
        "{\"caracal_replay\":1}\n"
    );

    // Restore verification passes with the restored secrets (no service URL and no canary:
    // warnings, not failures).
    let env_file = secrets.join("runtime.env");
    let verify = |env_file: &Path| {
        caracal(
            &[
                "restore",
                "verify",
                "--archive",
                archive.to_str().unwrap(),
                "--identity",
                key.to_str().unwrap(),
                "--database-url",
                &target.url(),
                "--env-file",
                env_file.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = verify(&env_file);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}{}", stderr(&out));
    // The test cluster is shared: a warning without --strict.
    assert!(report.contains("WARN  restore.isolated"), "{report}");
    for ok in [
        "kek.match",
        "restore.keys",
        "db.migrations",
        "restore.data",
        "gateway.bindings",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok") && l.ends_with(ok)),
            "{ok}: {report}"
        );
    }
    assert!(!report.contains(KEK_HEX) && !report.contains(admin_token));

    // With a wrong ZONE_KEK it fails and names the cause, never the key.
    let wrong_kek = "5b".repeat(32);
    let wrong_env = work.path().join("wrong.env");
    write(
        &wrong_env,
        &std::fs::read_to_string(&env_file)?.replace(KEK_HEX, &wrong_kek),
    );
    let out = verify(&wrong_env);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let kek_line = report
        .lines()
        .find(|l| l.contains("kek.match"))
        .unwrap_or_default();
    assert!(kek_line.starts_with("FAIL"), "{report}");
    assert!(report.contains("kek:"), "names the key ids: {report}");
    assert!(
        !report.contains(&wrong_kek) && !report.contains(KEK_HEX),
        "{report}"
    );

    // A row added after the restore is caught by the data step.
    sqlx::raw_sql("INSERT INTO caracal.zones (id, name, slug) VALUES ('late', 'late', 'late')")
        .execute(&mut target.admin().await?)
        .await?;
    let out = verify(&env_file);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("zones (1 in the backup, 2 restored)"),
        "{}",
        stdout(&out)
    );
    sqlx::raw_sql("DELETE FROM caracal.zones WHERE id = 'late'")
        .execute(&mut target.admin().await?)
        .await?;

    // So is a policy set deactivated after it (no row count changes).
    sqlx::raw_sql("UPDATE caracal.policy_set_bindings SET active_version_id = NULL")
        .execute(&mut target.admin().await?)
        .await?;
    let out = verify(&env_file);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out)
            .contains("acme/acme-main-set (active acme-main-psv in the backup, none restored)"),
        "{}",
        stdout(&out)
    );
    sqlx::raw_sql("UPDATE caracal.policy_set_bindings SET active_version_id = 'acme-main-psv'")
        .execute(&mut target.admin().await?)
        .await?;

    // With --start, every role of a `caracal all` on the target becomes ready and the canary
    // (provisioning, exchange, sessions, delegated mint, gateway request, both audit events)
    // passes: exit 0, and only the shared cluster warns.
    let redis = tests_harness::audit::RedisLease::acquire().await?;
    let out = caracal(
        &[
            "restore",
            "verify",
            "--archive",
            archive.to_str().unwrap(),
            "--identity",
            key.to_str().unwrap(),
            "--database-url",
            &target.url(),
            "--env-file",
            env_file.to_str().unwrap(),
            "--start",
            "--redis-url",
            &redis.url,
        ],
        &[],
    );
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}{}", stderr(&out));
    for ok in ["restore.data", "restore.ready", "restore.canary"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok") && l.ends_with(ok)),
            "{ok}: {report}"
        );
    }
    assert!(report.contains("both audit events landed"), "{report}");
    assert!(!report.contains(admin_token) && !report.contains(COORDINATOR_TOKEN));

    // A second restore into the now non-empty target is refused.
    let out = caracal(
        &[
            "backup",
            "restore",
            archive.to_str().unwrap(),
            "--into",
            &target.url(),
            "--identity",
            key.to_str().unwrap(),
            "--allow-same-cluster",
        ],
        &[],
    );
    assert_one_line_error(&out, 1, "already has a caracal schema");
    Ok(())
}

#[tokio::test]
async fn restores_that_would_hurt_the_source_or_cannot_be_trusted_are_refused() -> anyhow::Result<()>
{
    let source = provisioned_source().await?;
    let work = tempfile::tempdir()?;
    let pass = work.path().join("pass");
    write(&pass, "a long enough backup passphrase\n");
    let archive = work.path().join("caracal.backup");
    let out = caracal(
        &[
            "backup",
            "create",
            "--out",
            archive.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[("DATABASE_URL", &source.url())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("secrets not included"),
        "{}",
        stdout(&out)
    );
    let target = TestDb::create().await?;
    let restore = |into: &str, extra: &[&str], passphrase: &Path| {
        let mut args = vec![
            "backup",
            "restore",
            archive.to_str().unwrap(),
            "--into",
            into,
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        caracal(&args, &[])
    };

    // The source itself, with or without consent to share its cluster.
    let out = restore(&source.url(), &["--allow-same-cluster"], &pass);
    assert_one_line_error(&out, 1, "is the source database");
    // Another database of the same cluster needs consent.
    let out = restore(&target.url(), &[], &pass);
    assert_one_line_error(&out, 1, "--allow-same-cluster");
    // The wrong passphrase opens nothing.
    let wrong = work.path().join("wrong");
    write(&wrong, "another long passphrase\n");
    let out = restore(&target.url(), &["--allow-same-cluster"], &wrong);
    assert_one_line_error(&out, 1, "cannot be opened with this passphrase");
    // A flipped byte in the sealed stream is caught by age's authentication.
    let mut bytes = std::fs::read(&archive)?;
    let last = bytes.len() - 40;
    bytes[last] ^= 1;
    let tampered = work.path().join("tampered.backup");
    std::fs::write(&tampered, &bytes)?;
    let out = caracal(
        &[
            "backup",
            "restore",
            tampered.to_str().unwrap(),
            "--into",
            &target.url(),
            "--passphrase-file",
            pass.to_str().unwrap(),
            "--allow-same-cluster",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    // Nothing was restored by any of these.
    let mut conn = target.admin().await?;
    let has_schema: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'caracal')")
            .fetch_one(&mut conn)
            .await?;
    assert!(!has_schema);
    Ok(())
}

#[test]
fn backup_needs_exactly_one_way_to_seal_and_a_valid_recipient() {
    let out = caracal(&["backup", "create", "--out", "/tmp/never"], &[]);
    assert_one_line_error(&out, 2, "give exactly one of --recipient");
    let out = caracal(
        &[
            "backup",
            "create",
            "--out",
            "/tmp/never",
            "--recipient",
            "age1nope",
            "--unencrypted",
        ],
        &[],
    );
    assert_one_line_error(&out, 2, "give exactly one of");
    let out = caracal(
        &[
            "backup",
            "create",
            "--out",
            "/tmp/never",
            "--recipient",
            "age1nope",
        ],
        &[(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )],
    );
    assert_one_line_error(&out, 2, "age1nope is not an age X25519 recipient");
    let out = caracal(
        &[
            "backup",
            "restore",
            "/tmp/never",
            "--into",
            "postgres://h/x; y",
            "--unencrypted",
        ],
        &[],
    );
    assert_one_line_error(&out, 2, "--into");
}
