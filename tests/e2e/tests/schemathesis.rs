//! Property-based test of the admin API against its own OpenAPI document: schemathesis
//! (pinned in tests/api-fuzz/requirements.txt, Python 3.12) generates requests from
//! `/v1/openapi.json` and checks that no answer is a 5xx, and that every status, content
//! type and body conforms to the document.
//!
//! Run with `make conformance` (it builds the venv); `make test` skips it by name.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test binary fails loudly"
)]

use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN},
    audit::{AuditFixture, INTERNAL_TOKEN},
};

/// Examples per operation; a few seconds per operation on this machine.
const MAX_EXAMPLES: &str = "30";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_schemathesis_finds_no_server_error_and_no_schema_violation()
-> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let setup = tokio::process::Command::new(root.join("scripts/conformance-venv.sh"))
        .arg("tests/api-fuzz")
        .current_dir(&root)
        .status()
        .await?;
    assert!(setup.success(), "the schemathesis venv could not be built");
    let db = TestDb::migrated().await?;
    // The audit routes forward to a real ledger.
    let audit = AuditFixture::start(&db).await?;
    let audit_url = format!("http://{}", audit.addr);
    // schemathesis also sends requests without a token; they must not lock it out.
    let api = ApiFixture::start_with(
        &db,
        &[
            ("CARACAL_API_AUTH_FAILURES_PER_MINUTE", "1000000"),
            ("CARACAL_AUDIT_URL", audit_url.as_str()),
            ("CARACAL_INTERNAL_TOKEN", INTERNAL_TOKEN),
        ],
    )
    .await?;
    let created = api
        .admin(
            "POST",
            "/v1/zones",
            Some(&serde_json::json!({"name": "fuzzed"})),
        )
        .await?;
    assert_eq!(created.status, 201);
    let schema = format!("http://{}/v1/openapi.json", api.addr);
    let output = tokio::process::Command::new(root.join("tests/api-fuzz/.venv/bin/st"))
        .args([
            "run",
            &schema,
            "--header",
            &format!("Authorization: Bearer {BOOTSTRAP_TOKEN}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "20261202",
            "--workers",
            "2",
            "--no-color",
        ])
        // The upload route's `application/wasm` body is serialized as raw bytes.
        .env("SCHEMATHESIS_HOOKS", "tests/api-fuzz/hooks.py")
        .current_dir(&root)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    api.stop().await;
    audit.stop().await;
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    Ok(())
}
