//! The `caracal` binary as an operator runs it: exit codes, one-line errors that name the
//! problem without echoing secrets, and no panics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly, like the tests themselves"
)]

mod backup;

use std::process::{Command, Output};

use tests_harness::TestDb;

const KEY_VARS: &[&str] = &[
    "ZONE_KEK",
    "ZONE_KEK_FILE",
    "ZONE_KEK_PREVIOUS",
    "ZONE_KEK_PREVIOUS_FILE",
    "ZONE_KEK_PROVIDER",
    "AUDIT_HMAC_KEY",
    "AUDIT_HMAC_KEY_FILE",
    "STREAMS_HMAC_KEY",
    "STREAMS_HMAC_KEY_FILE",
    "DATABASE_URL",
    "CARACAL_MIGRATE_DATABASE_URL",
];

/// `caracal <args>` with a clean environment plus `vars`.
fn caracal(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caracal"));
    cmd.args(args);
    for var in KEY_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exactly one line on stderr, starting with `caracal: `, no panic, no backtrace.
fn assert_one_line_error(out: &Output, code: i32, contains: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "exactly one line expected: {err:?}");
    assert!(err.starts_with("caracal: "), "{err}");
    assert!(
        err.contains(contains),
        "{err:?} should mention {contains:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn keys_generate_prints_three_fresh_hex_keys() {
    let a = caracal(&["keys", "generate"], &[]);
    let b = caracal(&["keys", "generate"], &[]);
    assert!(a.status.success());
    let lines: Vec<String> = stdout(&a).lines().map(str::to_owned).collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(names, ["ZONE_KEK", "AUDIT_HMAC_KEY", "STREAMS_HMAC_KEY"]);
    for line in &lines {
        let value = line.split_once('=').unwrap().1;
        assert_eq!(value.len(), 64);
        assert!(
            value
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
    assert_ne!(stdout(&a), stdout(&b), "keys are random");
    // A generated set passes `keys check`.
    let vars: Vec<(&str, &str)> = lines.iter().map(|l| l.split_once('=').unwrap()).collect();
    let check = caracal(&["keys", "check"], &vars);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stdout(&check).contains("ZONE_KEK ok: kek:"));
    for (_, value) in &vars {
        assert!(
            !stdout(&check).contains(value),
            "check must not print key material"
        );
    }
}

#[test]
fn malformed_zone_kek_fails_with_one_line_naming_the_problem() {
    let secretish = "deadbeefcafe";
    for (value, problem) in [
        (
            secretish,
            "expected 64 hex characters (32 bytes), found 12 characters",
        ),
        (&"zz".repeat(32)[..], "hexadecimal"),
        (&"00".repeat(32)[..], "all zero"),
    ] {
        let out = caracal(&["keys", "check"], &[("ZONE_KEK", value)]);
        assert_one_line_error(&out, 2, "ZONE_KEK");
        assert!(stderr(&out).contains(problem), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains(value),
            "the value must not be echoed"
        );
        // migrate validates the key before it touches the database.
        let out = caracal(
            &["migrate"],
            &[
                ("ZONE_KEK", value),
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
            ],
        );
        assert_one_line_error(&out, 2, "ZONE_KEK");
    }
}

#[test]
fn missing_zone_kek_and_unreadable_key_file_are_named() {
    let out = caracal(&["keys", "check"], &[]);
    assert_one_line_error(&out, 2, "ZONE_KEK is not configured");
    let out = caracal(&["keys", "check"], &[("ZONE_KEK_FILE", "/nonexistent/kek")]);
    assert_one_line_error(&out, 2, "ZONE_KEK_FILE: cannot read /nonexistent/kek");
}

#[test]
fn zone_kek_file_with_a_trailing_newline_is_accepted() {
    let dir = std::env::temp_dir().join(format!("caracal-kek-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kek");
    std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
    let out = caracal(
        &["keys", "check"],
        &[("ZONE_KEK_FILE", path.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn migrate_without_a_database_url_says_so() {
    let out = caracal(&["migrate"], &[]);
    assert_one_line_error(&out, 2, "DATABASE_URL");
}

#[test]
fn migrate_against_an_unreachable_database_says_so() {
    let out = caracal(
        &["migrate"],
        &[("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db")],
    );
    assert_one_line_error(&out, 2, "cannot connect to the database");
    assert!(!stderr(&out).contains("hunter2"));
    let out = caracal(
        &["migrate", "--verify"],
        &[("DATABASE_URL", "postgres://u@127.0.0.1:1/db")],
    );
    assert_one_line_error(&out, 2, "cannot connect to the database");
}

#[test]
fn migrate_with_a_bad_url_names_the_variable_not_the_value() {
    let out = caracal(&["migrate"], &[("DATABASE_URL", "mysql://u:hunter2@h/db")]);
    assert_one_line_error(&out, 2, "DATABASE_URL is not a valid postgres:// URL");
    assert!(!stderr(&out).contains("hunter2"));
}

#[tokio::test]
async fn migrate_against_a_missing_database_names_it() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let url = db.url().replace(db.name(), "caracal_test_never_created");
    let out = caracal(&["migrate"], &[("DATABASE_URL", &url)]);
    assert_one_line_error(
        &out,
        2,
        "database \"caracal_test_never_created\" does not exist",
    );
    Ok(())
}

#[tokio::test]
async fn migrate_verify_and_kek_canary_through_the_binary() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let url = db.url();
    let kek = "11".repeat(32);

    let out = caracal(&["migrate", "--verify"], &[("DATABASE_URL", &url)]);
    assert_eq!(out.status.code(), Some(3), "pending: {}", stdout(&out));
    assert!(stdout(&out).contains("pending: 0001_foundation.sql"));

    let out = caracal(&["migrate"], &[("DATABASE_URL", &url), ("ZONE_KEK", &kek)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("applied 0001_foundation.sql"));
    assert!(stdout(&out).contains("sealed the KEK canary under kek:"));

    let out = caracal(&["migrate"], &[("DATABASE_URL", &url), ("ZONE_KEK", &kek)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to apply"));
    assert!(stdout(&out).contains("ZONE_KEK opens the KEK canary"));

    let out = caracal(&["migrate", "--verify"], &[("DATABASE_URL", &url)]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // A different KEK is refused, naming both key ids and neither key.
    let other = "22".repeat(32);
    let out = caracal(
        &["migrate"],
        &[("DATABASE_URL", &url), ("ZONE_KEK", &other)],
    );
    assert_one_line_error(&out, 1, "zone_kek_mismatch: key does not match");
    assert!(!stderr(&out).contains(&other) && !stderr(&out).contains(&kek));

    // Drift makes --verify exit 1.
    sqlx::raw_sql("GRANT DELETE ON caracal.audit_events TO caracal_audit")
        .execute(&mut db.admin().await?)
        .await?;
    let out = caracal(&["migrate", "--verify"], &[("DATABASE_URL", &url)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("drift: caracal_audit has DELETE on audit_events"),
        "{}",
        stdout(&out)
    );
    Ok(())
}

#[tokio::test]
async fn migrate_refuses_an_edited_file_from_dir_naming_it() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let dir = std::env::temp_dir().join(format!("caracal-migrations-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap()))?;
        }
    }
    let edited = dir.join("0005_policy.sql");
    let mut sql = std::fs::read_to_string(&edited)?;
    sql.push_str("\n-- edited\n");
    std::fs::write(&edited, sql)?;
    let out = caracal(
        &["migrate", "--dir", dir.to_str().unwrap()],
        &[("DATABASE_URL", &db.url())],
    );
    std::fs::remove_dir_all(&dir)?;
    assert_one_line_error(&out, 1, "0005_policy.sql was edited after it was applied");
    Ok(())
}

#[tokio::test]
async fn a_wrong_kek_is_refused_before_any_migration_runs() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let url = db.url();
    let out = caracal(
        &["migrate"],
        &[("DATABASE_URL", &url), ("ZONE_KEK", &"33".repeat(32))],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let dir = std::env::temp_dir().join(format!("caracal-migrations-kek-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap()))?;
        }
    }
    let count = std::fs::read_dir(&dir)?.count();
    std::fs::write(
        dir.join(format!("{:04}_next.sql", count + 1)),
        "CREATE TABLE must_not_exist (id int);\n",
    )?;
    let out = caracal(
        &["migrate", "--dir", dir.to_str().unwrap()],
        &[("DATABASE_URL", &url), ("ZONE_KEK", &"44".repeat(32))],
    );
    std::fs::remove_dir_all(&dir)?;
    assert_one_line_error(&out, 1, "zone_kek_mismatch");
    let created: bool =
        sqlx::query_scalar("SELECT to_regclass('caracal.must_not_exist') IS NOT NULL")
            .fetch_one(&mut db.admin().await?)
            .await?;
    assert!(!created, "nothing may change under a wrong KEK");
    Ok(())
}

#[tokio::test]
async fn two_first_runs_with_a_kek_both_succeed_with_one_canary() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let url = db.url();
    let kek = "55".repeat(32);
    let spawn = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_caracal"));
        cmd.arg("migrate")
            .env("DATABASE_URL", &url)
            .env("ZONE_KEK", &kek);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output()?, b.wait_with_output()?);
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    let sealed = [&a, &b]
        .iter()
        .filter(|o| stdout(o).contains("sealed the KEK canary"))
        .count();
    assert_eq!(sealed, 1, "exactly one run seals; the other checks");
    Ok(())
}
