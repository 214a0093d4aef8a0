//! No secret reaches a log line. This binary holds one test: it installs the process-wide
//! subscriber at TRACE (every crate, sqlx included), drives the admin API and the STS
//! through every path that handles an application secret, an admin token or a bearer, and
//! searches everything that was logged.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use serde_json::json;
use tests_harness::{
    TestDb,
    api::{ApiFixture, BOOTSTRAP_TOKEN},
    sts::{GRANT, StsFixture},
};

#[tokio::test]
async fn secrets_tokens_and_bearers_never_reach_a_log_line() -> anyhow::Result<()> {
    let logs = tests_harness::capture_all_logs()?;
    let db = TestDb::migrated().await?;
    let api = ApiFixture::start(&db).await?;
    let sts = StsFixture::start(&db).await?;

    let zone = api
        .admin("POST", "/v1/zones", Some(&json!({"name": "Logs"})))
        .await?
        .json()?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("/v1/zones/{zone}/applications");
    let app = api
        .admin("POST", &base, Some(&json!({"name": "agent"})))
        .await?
        .json()?;
    let id = app["id"].as_str().unwrap().to_owned();
    let generated = app["client_secret"].as_str().unwrap().to_owned();
    let chosen = "caller-chosen-secret-logs-0001";
    let patched = api
        .admin(
            "PATCH",
            &format!("{base}/{id}"),
            Some(&json!({"client_secret": chosen})),
        )
        .await?;
    assert_eq!(patched.status, 200);
    let rotated = api
        .admin("POST", &format!("{base}/{id}/rotate-secret"), None)
        .await?
        .json()?["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    // A secret sent in the wrong place must not be echoed or logged either.
    let misplaced = "misplaced-secret-in-a-bad-field";
    let bad = api
        .admin(
            "PATCH",
            &format!("{base}/{id}"),
            Some(&json!({"name": 5, "client_secret": misplaced})),
        )
        .await?;
    assert_eq!(bad.status, 400);
    assert!(!String::from_utf8_lossy(&bad.body).contains(misplaced));

    // A provider secret, sealed on create and replaced on PATCH.
    let provider_key = "provider-api-key-in-logs-0001";
    let replaced_key = "provider-api-key-in-logs-0002";
    let provider = api
        .admin(
            "POST",
            &format!("/v1/zones/{zone}/providers"),
            Some(&json!({"name": "upstream", "kind": "api_key",
                         "config_json": {"header_name": "X-Api-Key", "api_key": provider_key}})),
        )
        .await?;
    assert_eq!(provider.status, 201, "{:?}", provider.json());
    let provider_id = provider.json()?["id"].as_str().unwrap().to_owned();
    let patched = api
        .admin(
            "PATCH",
            &format!("/v1/zones/{zone}/providers/{provider_id}"),
            Some(&json!({"config_json": {"header_name": "X-Api-Key", "api_key": replaced_key}})),
        )
        .await?;
    assert_eq!(patched.status, 200, "{:?}", patched.json());
    for body in [&provider.body, &patched.body] {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains(provider_key) && !text.contains(replaced_key));
    }

    let token = api
        .admin(
            "POST",
            "/v1/admin-tokens",
            Some(&json!({"name": "ops", "capability": "read"})),
        )
        .await?
        .json()?["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api.call(&token, "GET", "/v1/zones", None).await?.status,
        200
    );
    let wrong_bearer = "wrong-admin-bearer-value-0123456789";
    assert_eq!(
        api.call(wrong_bearer, "GET", "/v1/zones", None)
            .await?
            .status,
        401
    );

    // The STS: a right and a wrong secret for the same application.
    let wrong_secret = "definitely-the-wrong-secret-42";
    for secret in [rotated.as_str(), wrong_secret] {
        let resp = sts
            .token(&[
                ("grant_type", GRANT),
                ("application_id", &id),
                ("client_secret", secret),
                ("zone_id", &zone),
                ("resource", "resource://none"),
                ("scope", "agent:lifecycle"),
            ])
            .await?;
        assert!(resp.status >= 400, "{:?}", resp.json());
    }
    sts.stop().await;
    api.stop().await;

    let text = logs.text();
    assert!(
        text.contains("refused"),
        "the admin API's lines were captured"
    );
    assert!(text.contains("denied"), "the STS's lines were captured");
    for secret in [
        generated.as_str(),
        chosen,
        rotated.as_str(),
        misplaced,
        token.as_str(),
        wrong_bearer,
        wrong_secret,
        provider_key,
        replaced_key,
        BOOTSTRAP_TOKEN,
    ] {
        assert!(!text.contains(secret), "a log line carries a secret");
    }
    Ok(())
}
