//! The denial steps of authority-and-policy.md §4.2 that `gateway` does not cover, each with
//! its exact status, code and description, and the upstream never reached: step 13 from
//! Postgres and from each stream, 14–19, 21, 23 (`no_rule_matched`), 24–30.

use std::time::Duration;

use serde_json::{Value, json};
use tests_harness::{http::HttpResponse, provision::Provision};

use super::gateway::{AGENT, Ids, RESOURCE, Scenario, ZONE, assert_denied};

/// A second identifier the policy grants the agent (`read` only).
const OTHER: &str = "resource://other";

/// Claims for `resource://other` with scope `read` (what the policy's role allows there).
fn other_claims(s: &Scenario) -> Value {
    let mut claims = s.claims();
    claims["target"] = json!([OTHER]);
    claims["scope"] = json!("read");
    claims
}

/// A `transport_uniform` resource `id` for `identifier` on `prov-none`, its upstream the
/// scenario's (`None`: no upstream).
fn resource_sql(id: &str, identifier: &str, upstream: Option<&str>) -> String {
    let upstream = upstream.map_or_else(|| "NULL".to_owned(), |u| format!("'{u}'"));
    format!(
        "INSERT INTO resources (id, zone_id, name, identifier, upstream_url, credential_provider_id, scopes, operation_enforcement) \
         VALUES ('{id}', '{ZONE}', '{id}', '{identifier}', {upstream}, 'prov-none', ARRAY['read'], 'transport_uniform')"
    )
}

/// Calls `GET /items` until `done(resp)` or 2 s pass; returns the last answer.
async fn until(s: &Scenario, done: impl Fn(&HttpResponse) -> bool) -> HttpResponse {
    let mut last = s.call("GET", "/items", &s.mandate(), &[]).await;
    for _ in 0..100 {
        if done(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = s.call("GET", "/items", &s.mandate(), &[]).await;
    }
    last
}

/// One allowed call, then `sql`, a forced reload, and step 13's answer; the upstream saw
/// only the first call.
async fn revoked_in_postgres(sql: &str) -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    s.exec(sql).await?;
    s.reload().await;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(&resp, 401, "invalid_token", "session revoked");
    assert_eq!(
        s.upstream.requests().len(),
        1,
        "the revoked call never reached the upstream"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step13_a_record_revoked_in_postgres_denies_after_a_reload() -> anyhow::Result<()> {
    revoked_in_postgres(
        "UPDATE sessions SET status = 'revoked', revoked_at = now(), revoked_reason = 'requested', updated_at = now() \
          WHERE id = '{record}'",
    )
    .await
}

#[tokio::test]
async fn step13_a_session_suspended_in_postgres_denies_after_a_reload() -> anyhow::Result<()> {
    revoked_in_postgres(
        "UPDATE agent_sessions SET status = 'suspended', status_version = status_version + 1, updated_at = now() \
          WHERE id = '{target}'",
    )
    .await
}

#[tokio::test]
async fn step13_an_edge_revoked_in_postgres_denies_after_a_reload() -> anyhow::Result<()> {
    revoked_in_postgres(
        "UPDATE delegation_edges SET status = 'revoked', revoked_at = now(), edge_version = edge_version + 1, \
                updated_at = now() WHERE id = '{edge}'",
    )
    .await
}

#[tokio::test]
async fn step13_a_revoked_root_record_denies() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push(format!(
            "INSERT INTO sessions (id, zone_id, session_type, subject_id, root_id, status, expires_at, revoked_at) \
             VALUES ('{{record}}-root', '{ZONE}', 'application', '{AGENT}', '{{record}}-root', 'revoked', \
                     now() + interval '1 hour', now())"
        ));
    })
    .await?;
    let mut claims = s.claims();
    claims["root_sid"] = json!(format!("{}-root", s.ids.record));
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(&resp, 401, "invalid_token", "session revoked");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step13_an_edge_revoke_message_denies_at_once() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    assert_eq!(s.call("GET", "/items", &s.mandate(), &[]).await.status, 200);
    tests_harness::gateway::publish(
        control_events::streams::DELEGATIONS_INVALIDATE,
        &[
            ("event", "edge_revoke"),
            ("zone_id", ZONE),
            ("epoch", "2"),
            ("edge_id", s.ids.edge.as_str()),
            ("affected_edges", "1"),
            ("reason", "requested"),
        ],
    )
    .await?;
    let resp = until(&s, |r| r.status != 200).await;
    assert_denied(&resp, 401, "invalid_token", "session revoked");
    assert_eq!(
        s.upstream.requests().len(),
        1,
        "only the call before the message"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step13_a_lifecycle_suspend_denies_and_a_resume_clears_it() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    assert_eq!(s.call("GET", "/items", &s.mandate(), &[]).await.status, 200);
    let lifecycle = |event: &'static str| {
        let target = s.ids.target.clone();
        async move {
            tests_harness::gateway::publish(
                control_events::streams::AGENTS_LIFECYCLE,
                &[
                    ("event", event),
                    ("zone_id", ZONE),
                    ("agent_session_id", target.as_str()),
                    ("reason", "requested"),
                ],
            )
            .await
        }
    };
    lifecycle("suspend").await?;
    let resp = until(&s, |r| r.status != 200).await;
    assert_denied(&resp, 401, "invalid_token", "session revoked");
    let before_resume = s.upstream.requests().len();
    lifecycle("resume").await?;
    let resp = until(&s, |r| r.status == 200).await;
    assert_eq!(
        resp.status,
        200,
        "the resume cleared the mark: {:?}",
        resp.json()
    );
    assert_eq!(s.upstream.requests().len(), before_resume + 1);
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step14_an_archived_application_is_refused_after_a_reload() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    assert_eq!(s.call("GET", "/items", &s.mandate(), &[]).await.status, 200);
    s.exec(&format!(
        "UPDATE applications SET archived_at = now() WHERE id = '{AGENT}'"
    ))
    .await?;
    s.reload().await;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(&resp, 401, "access_denied", "invalid client credentials");
    assert_eq!(s.upstream.requests().len(), 1);
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step15_the_gateway_claims_are_checked() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let now = tests_harness::oidc::unix_now();
    let cases: [(&str, Value); 5] = [
        ("iss", json!("http://evil.example")),
        ("aud", json!([RESOURCE])),
        ("aud", json!("http://sts.test.invalid/other")),
        ("use", json!("resource")),
        ("iat", json!(now + 120)),
    ];
    for (claim, value) in cases {
        let mut claims = s.claims();
        claims[claim] = value.clone();
        let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
        assert_eq!(resp.status, 401, "{claim} = {value}: {:?}", resp.json());
        assert_denied(&resp, 401, "invalid_token", "invalid subject_token");
    }
    let mut claims = s.claims();
    claims.as_object_mut().expect("claims").remove("sid");
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(
        &resp,
        401,
        "invalid_token",
        "missing token authority record",
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step16_an_expired_authority_record() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push(
            "UPDATE sessions SET expires_at = now() - interval '1 minute' WHERE id = '{record}'"
                .into(),
        );
    })
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "authority record inactive or expired",
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step17_an_expired_edge_and_a_session_of_another_application() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push("UPDATE delegation_edges SET expires_at = now() - interval '1 minute' WHERE id = '{edge}'".into());
    })
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "delegation edge inactive or expired",
    );
    // No edge, and the session of the issuer application: §2.3 step 2.
    let mut claims = s.claims();
    claims
        .as_object_mut()
        .expect("claims")
        .remove("delegation_edge_id");
    claims["agent_session_id"] = json!(s.ids.source);
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(&resp, 403, "access_denied", "session not owned by caller");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step18_an_unknown_resource_is_policy_denied() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let resp = s
        .call_to("resource://nope", "GET", "/items", &s.mandate(), &[])
        .await;
    assert_denied(&resp, 403, "access_denied", "policy denied");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step19_a_resource_outside_the_delegation_constraints() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push(
            "UPDATE delegation_edges SET constraints_json = '{\"resources\":[\"resource://other\"]}' WHERE id = '{edge}'"
                .into(),
        );
    })
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(&resp, 403, "access_denied", "policy denied");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step21_the_control_audience_needs_a_control_key() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push(resource_sql(
            "res-control",
            "caracal-control",
            Some("{upstream}/base"),
        ));
    })
    .await?;
    let mut claims = s.claims();
    claims["target"] = json!(["caracal-control"]);
    let resp = s
        .call_to(
            "caracal-control",
            "GET",
            "/items",
            &s.signer.sign(&claims)?,
            &[],
        )
        .await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "control resource requires a control key",
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step23_a_mandate_without_delegation_matches_no_rule() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let mut claims = s.claims();
    let object = claims.as_object_mut().expect("claims");
    object.remove("delegation_edge_id");
    object.remove("agent_session_id");
    let resp = s.call("GET", "/items", &s.signer.sign(&claims)?, &[]).await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "policy denied (no_rule_matched)",
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

/// Step 24 with `key_by`: two calls pass, the third is limited; the Redis buckets carry the
/// application (`application`) or `*` (`resource`). The limited resource's row id is unique,
/// so runs and parallel tests do not share a budget.
async fn rate_limited(key_by: &str) -> anyhow::Result<()> {
    let id = format!(
        "res-rl-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let (insert, limit) = (
        resource_sql(&id, OTHER, Some("{upstream}/base")),
        format!(
            "INSERT INTO resource_rate_limits (zone_id, resource_id, window_seconds, max_requests, key_by) \
             VALUES ('{ZONE}', '{id}', 60, 2, '{key_by}')"
        ),
    );
    let s = Scenario::start_with(&[], |sql| {
        sql.push(insert);
        sql.push(limit);
    })
    .await?;
    for _ in 0..2 {
        let resp = s
            .call_to(
                OTHER,
                "GET",
                "/items",
                &s.signer.sign(&other_claims(&s))?,
                &[],
            )
            .await;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
    }
    let resp = s
        .call_to(
            OTHER,
            "GET",
            "/items",
            &s.signer.sign(&other_claims(&s))?,
            &[],
        )
        .await;
    assert_denied(&resp, 429, "rate_limited", "resource rate limit exceeded");
    let retry: u64 = resp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        s.upstream.requests().len(),
        2,
        "the limited call never reached the upstream"
    );

    let client = redis::Client::open(tests_harness::sts::redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("caracal:gw-rl:{{{ZONE}:{id}}}:*"))
        .query_async(&mut conn)
        .await?;
    assert!(!keys.is_empty(), "a bucket exists");
    let subject = if key_by == "resource" { "*" } else { AGENT };
    for key in &keys {
        let owner = key.rsplit(':').nth(1).unwrap_or_default();
        assert_eq!(owner, subject, "bucket {key} for key_by {key_by}");
    }
    let _removed: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step24_the_rate_limit_keyed_by_application() -> anyhow::Result<()> {
    rate_limited("application").await
}

#[tokio::test]
async fn step24_the_rate_limit_keyed_by_resource() -> anyhow::Result<()> {
    rate_limited("resource").await
}

#[tokio::test]
async fn step25_and_31_a_bound_plugin_fails_closed() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[], |sql| {
        sql.push(resource_sql("res-inj", OTHER, Some("{upstream}/base")));
        for (id, name, world, content) in [
            ("plug-auth", "deny-all", "authorizer", "\\x01"),
            ("plug-inj", "inject-x", "credential-injector", "\\x02"),
        ] {
            sql.push(format!(
                "INSERT INTO gateway_plugins (id, zone_id, name, world, component_sha256, component) \
                 VALUES ('{id}', '{ZONE}', '{name}', '{world}', sha256('{content}'::bytea), '{content}'::bytea)"
            ));
        }
        sql.push(format!(
            "INSERT INTO resource_plugin_bindings (id, zone_id, resource_id, plugin_id, hook, position) \
             VALUES ('bind-auth', '{ZONE}', 'res-echo', 'plug-auth', 'authorizer', 0)"
        ));
        sql.push(format!(
            "INSERT INTO resource_plugin_bindings (id, zone_id, resource_id, plugin_id, hook, position, mode) \
             VALUES ('bind-inj', '{ZONE}', 'res-inj', 'plug-inj', 'injector', 0, 'augment')"
        ));
    })
    .await?;
    // Step 25: an authorizer.
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(&resp, 503, "plugin_failed", "plugin deny-all failed");
    // Step 31: an injector.
    let resp = s
        .call_to(
            OTHER,
            "GET",
            "/items",
            &s.signer.sign(&other_claims(&s))?,
            &[],
        )
        .await;
    assert_denied(&resp, 503, "plugin_failed", "plugin inject-x failed");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step26_a_resource_without_an_upstream() -> anyhow::Result<()> {
    let s =
        Scenario::start_with(&[], |sql| sql.push(resource_sql("res-noup", OTHER, None))).await?;
    let resp = s
        .call_to(
            OTHER,
            "GET",
            "/items",
            &s.signer.sign(&other_claims(&s))?,
            &[],
        )
        .await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "resource upstream not configured",
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step27_blocked_upstreams_are_not_addressable() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    for url in [
        "http://169.254.169.254/latest",
        "http://[fe80::1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::ffff:169.254.169.254]/",
        "http://0.0.0.0:8080/",
        "http://[::]:8080/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "ftp://127.0.0.1/",
        "http://user:pw@127.0.0.1/",
    ] {
        s.exec(&format!(
            "UPDATE resources SET upstream_url = '{url}' WHERE id = 'res-echo'"
        ))
        .await?;
        s.reload().await;
        let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
        assert_eq!(resp.status, 502, "{url}: {:?}", resp.json());
        assert_denied(&resp, 502, "internal_error", "upstream not addressable");
    }
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step27_a_host_outside_the_allowlist_is_not_addressable() -> anyhow::Result<()> {
    let s = Scenario::start_with(&[("UPSTREAM_HOST_ALLOWLIST", "example.com")], |_| {}).await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(&resp, 502, "internal_error", "upstream not addressable");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

/// A scenario whose `res-echo` uses provider `prov-x` (sealed under `kek_hex`), with the
/// zone signing key in `signer_status`.
async fn with_provider(
    signer_status: &str,
    kind: &str,
    config: Value,
    secrets: Option<Value>,
    kek_hex: &str,
) -> anyhow::Result<Scenario> {
    Scenario::start_custom(
        &[],
        signer_status,
        async move |p: &mut Provision, _ids: &Ids| {
            p.provider_sealed_under(kek_hex, ZONE, "prov-x", kind, &config, secrets.as_ref())
                .await?;
            p.exec("UPDATE resources SET credential_provider_id = 'prov-x' WHERE id = 'res-echo'")
                .await
        },
    )
    .await
}

#[tokio::test]
async fn step28_the_credential_may_not_go_to_this_host() -> anyhow::Result<()> {
    let s = with_provider(
        "active",
        "api_key",
        json!({"header_name": "X-Api-Key", "allowed_token_hosts": ["other.example"]}),
        Some(json!({"api_key": "key-0123456789"})),
        tests_harness::gateway::KEK_HEX,
    )
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(
        &resp,
        502,
        "internal_error",
        "provider credential not allowed for upstream host",
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step29_a_secret_that_does_not_open_is_unavailable() -> anyhow::Result<()> {
    let s = with_provider(
        "active",
        "api_key",
        json!({"header_name": "X-Api-Key"}),
        Some(json!({"api_key": "key-0123456789"})),
        &"22".repeat(32),
    )
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    let body = resp.json()?;
    assert_eq!(resp.status, 502, "{body}");
    assert_eq!(body["error"], "http_request_failed", "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description
            .starts_with("upstream credential for resource resource://echo is unavailable: "),
        "{description}"
    );
    assert!(
        !description.contains("key-0123456789"),
        "no secret in the answer"
    );
    assert_eq!(
        body["requestId"].as_str(),
        resp.header("x-request-id").as_deref()
    );
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn step30_no_signing_key_to_mint_the_resource_mandate() -> anyhow::Result<()> {
    // A retiring key still verifies the gateway mandate but may not sign.
    let s = with_provider(
        "retiring",
        "caracal_mandate",
        json!({}),
        None,
        tests_harness::gateway::KEK_HEX,
    )
    .await?;
    let resp = s.call("GET", "/items", &s.mandate(), &[]).await;
    assert_denied(&resp, 500, "internal_error", "");
    assert!(s.upstream.requests().is_empty());
    s.stop().await;
    Ok(())
}
