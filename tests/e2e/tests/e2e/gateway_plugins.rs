//! WebAssembly plugins through the real gateway (authority-and-policy.md §4.2 steps 25 and 31,
//! §7.5; `wit/gateway.wit`), with the real components of `tests-fixtures`, bound through
//! Postgres rows and, for the standalone sidecar, through its file.
//!
//! Every test asserts the exact answer, what the upstream received (or that it received
//! nothing), and the `plugins` member of the request's audit event. The credential tests also
//! check that the provider's secret reached the upstream only where an operation attached it,
//! and never an audit event.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tests_harness::{
    gateway::STREAMS_KEY_HEX,
    http::{self, HttpResponse},
    plugins::PluginBinding,
    provision::Provision,
    upstream::{Recorded, Upstream},
};
use tokio::time::Instant;

use super::gateway::{Ids, RESOURCE, Scenario, ZONE, assert_denied};
use super::gateway_faults::{redis, stream_tip, wait_for_events};

/// A second resource of the scenario: `transport_uniform`, provider `none`, the upstream
/// without a base path, so that the path a plugin sees is the one the caller sent.
const OTHER: &str = "resource://other";
/// The API key of provider `prov-key` (`res-echo`'s provider in every scenario here).
const SECRET: &str = "plugin-secret-7Hq2Xv9Lm4Rz";

const AUTHORIZER: &str = "authorizer";
const INJECTOR: &str = "credential-injector";

/// A component registered in the scenario's zone.
#[derive(Debug, Clone, Copy)]
struct Plugin {
    id: &'static str,
    name: &'static str,
    /// The world stored with it (`gateway_plugins.world`).
    world: &'static str,
    path: &'static str,
}

const ALLOW: Plugin = Plugin {
    id: "plug-allow",
    name: "allow",
    world: AUTHORIZER,
    path: tests_fixtures::FIXTURE_ALLOW,
};
const DENY: Plugin = Plugin {
    id: "plug-deny",
    name: "deny",
    world: AUTHORIZER,
    path: tests_fixtures::FIXTURE_DENY,
};
const LOOP: Plugin = Plugin {
    id: "plug-loop",
    name: "loop",
    world: AUTHORIZER,
    path: tests_fixtures::FIXTURE_LOOP,
};
const MEMORY: Plugin = Plugin {
    id: "plug-memory",
    name: "memory",
    world: AUTHORIZER,
    path: tests_fixtures::FIXTURE_MEMORY,
};
const TRAP: Plugin = Plugin {
    id: "plug-trap",
    name: "trap",
    world: AUTHORIZER,
    path: tests_fixtures::FIXTURE_TRAP,
};
/// Stored as an authorizer, which it is not (the admin API would refuse the upload).
const WRONG_WORLD: Plugin = Plugin {
    id: "plug-wrong-world",
    name: "wrong-world",
    world: AUTHORIZER,
    path: tests_fixtures::FIXTURE_WRONG_WORLD,
};
const FORBIDDEN_HEADER: Plugin = Plugin {
    id: "plug-forbidden-header",
    name: "forbidden-header",
    world: INJECTOR,
    path: tests_fixtures::FIXTURE_FORBIDDEN_HEADER,
};
const OVERSIZE: Plugin = Plugin {
    id: "plug-oversize",
    name: "oversize",
    world: INJECTOR,
    path: tests_fixtures::FIXTURE_OVERSIZE,
};
const ECHO_INJECTOR: Plugin = Plugin {
    id: "plug-echo-injector",
    name: "echo-injector",
    world: INJECTOR,
    path: tests_fixtures::FIXTURE_ECHO_INJECTOR,
};
const RULES: Plugin = Plugin {
    id: "plug-rules",
    name: "rules",
    world: AUTHORIZER,
    path: tests_fixtures::EXAMPLE_REQUEST_RULES,
};
const SIGNING: Plugin = Plugin {
    id: "plug-signing",
    name: "signing",
    world: INJECTOR,
    path: tests_fixtures::EXAMPLE_REQUEST_SIGNING,
};
const HEADER_MAPPING: Plugin = Plugin {
    id: "plug-header-mapping",
    name: "header-mapping",
    world: INJECTOR,
    path: tests_fixtures::EXAMPLE_HEADER_MAPPING,
};

/// A deadline generous enough that only a guest that never returns reaches it, even in a
/// debug build on a busy machine.
const ROOMY_DEADLINE_MS: i32 = 1000;

/// The default scenario of `gateway.rs` plus: `res-echo` on provider `prov-key` (`api_key`
/// placed in `X-Api-Key`, holding [`SECRET`]), `res-other` ([`OTHER`]), the `plugins`
/// registered and the `bindings` inserted before the gateway starts.
async fn start(plugins: &[Plugin], bindings: Vec<PluginBinding>) -> anyhow::Result<Scenario> {
    let plugins = plugins.to_vec();
    Scenario::start_custom(&[], "active", async move |p: &mut Provision, ids: &Ids| {
        p.provider_with_secret(
            ZONE,
            "prov-key",
            "api_key",
            &json!({"header_name": "X-Api-Key"}),
            Some(&json!({"api_key": SECRET})),
        )
        .await?;
        p.exec("UPDATE resources SET credential_provider_id = 'prov-key' WHERE id = 'res-echo'")
            .await?;
        p.resource(
            ZONE,
            "res-other",
            OTHER,
            &["read"],
            Some(&ids.upstream),
            "prov-none",
        )
        .await?;
        p.exec(
            "UPDATE resources SET operation_enforcement = 'transport_uniform' WHERE id = 'res-other'",
        )
        .await?;
        for plugin in &plugins {
            let component = tests_fixtures::read(plugin.path)?;
            p.plugin(ZONE, plugin.id, plugin.name, plugin.world, &component)
                .await?;
        }
        for binding in &bindings {
            p.bind_plugin(ZONE, binding).await?;
        }
        Ok(())
    })
    .await
}

/// Runs `sql` and has the gateway rebuild its snapshot before answering.
async fn change(s: &Scenario, sql: &str) -> anyhow::Result<()> {
    s.exec(sql).await?;
    s.reload().await;
    Ok(())
}

/// A fresh mandate for `resource` (`read write` on [`RESOURCE`], `read` on [`OTHER`]).
fn mandate_for(s: &Scenario, resource: &str) -> String {
    if resource == RESOURCE {
        return s.mandate();
    }
    let mut claims = s.claims();
    claims["target"] = json!([resource]);
    claims["scope"] = json!("read");
    s.signer.sign(&claims).expect("sign")
}

/// One call with a fresh mandate for `resource` and a fresh request id, plus `headers` and
/// `body`. Returns the answer and the request id.
async fn send(
    s: &Scenario,
    resource: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (HttpResponse, String) {
    let token = mandate_for(s, resource);
    let id = format!("gw-plugin-{}", uuid::Uuid::now_v7().simple());
    let auth = format!("Bearer {token}");
    let mut all = vec![
        ("authorization", auth.as_str()),
        ("x-caracal-resource", resource),
        ("x-request-id", id.as_str()),
    ];
    all.extend_from_slice(headers);
    let resp = http::request(s.gateway.addr, method, path, &all, body.to_vec())
        .await
        .expect("gateway request");
    (resp, id)
}

/// `GET path` on `resource` without a body.
async fn get(s: &Scenario, resource: &str, path: &str) -> (HttpResponse, String) {
    send(s, resource, "GET", path, &[], b"").await
}

/// The newest entry of the audit stream: the events of this test's calls come after it.
async fn audit_tip() -> anyhow::Result<String> {
    let mut conn = redis().await?;
    stream_tip(&mut conn).await
}

/// Every audit event after `from` of the calls `ids`, once each of them has its
/// `gateway_resource_request` event (waiting up to 15 s). Asserts that none of them holds
/// [`SECRET`].
async fn audit_of(from: &str, ids: &[String]) -> anyhow::Result<Vec<Value>> {
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = wait_for_events(from, &wanted, ids.len(), Duration::from_millis(300)).await?;
        let complete = ids.iter().all(|id| request_event(&events, id).is_some());
        if complete {
            for event in &events {
                assert!(
                    !event.to_string().contains(SECRET),
                    "the provider's secret is in an audit event: {event}"
                );
            }
            return Ok(events);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every call has its gateway_resource_request event: {events:?}"
        );
    }
}

/// The `gateway_resource_request` event of call `id` among `events`.
fn request_event<'a>(events: &'a [Value], id: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["request_id"] == id && e["event_type"] == "gateway_resource_request")
}

/// The `gateway_resource_request` event of the one call `id`.
async fn audit_one(from: &str, id: &str) -> anyhow::Result<Value> {
    let events = audit_of(from, &[id.to_owned()]).await?;
    Ok(request_event(&events, id).cloned().expect("the event"))
}

/// The `plugins` member of a request event.
fn plugins_of(event: &Value) -> &Value {
    &event["metadata_json"]["plugins"]
}

/// Asserts a 503 `plugin_failed` naming `plugin`, and that the request's audit event is a
/// denial whose only plugin record is the failure of `plugin` at `hook` with `cause`.
/// Returns the record's detail.
async fn assert_plugin_failed(
    resp: &HttpResponse,
    id: &str,
    from: &str,
    plugin: Plugin,
    hook: &str,
    cause: &str,
) -> anyhow::Result<String> {
    assert_denied(
        resp,
        503,
        "plugin_failed",
        &format!("plugin {} failed", plugin.name),
    );
    let event = audit_one(from, id).await?;
    assert_eq!(event["decision"], "deny", "{event}");
    let m = &event["metadata_json"];
    assert_eq!(m["gateway_status"], 503, "{m}");
    assert_eq!(m["reason"], "plugin_failed", "{m}");
    let records = plugins_of(&event).as_array().expect("a plugins member");
    assert_eq!(records.len(), 1, "{m}");
    let record = &records[0];
    assert_eq!(record["plugin"], plugin.name, "{record}");
    assert_eq!(record["plugin_id"], plugin.id, "{record}");
    assert_eq!(record["hook"], hook, "{record}");
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(record["cause"], cause, "{record}");
    Ok(record["detail"].as_str().unwrap_or_default().to_owned())
}

/// The single value of header `name` the upstream received.
fn header(seen: &Recorded, name: &str) -> Option<String> {
    let mut values = seen.headers.get_all(name).iter();
    let first = values
        .next()
        .map(|v| v.to_str().expect("a visible header value").to_owned());
    assert!(values.next().is_none(), "one {name} header");
    first
}

/// Asserts that [`SECRET`] (as text, in hex or in Base64) reached the upstream only in the
/// headers `attached_in`: no other header, nor the path, the query or the body, carries it.
fn assert_secret_only_in(seen: &Recorded, attached_in: &[&str]) {
    let forms = [
        SECRET.to_owned(),
        hex::encode(SECRET),
        base64::engine::general_purpose::STANDARD.encode(SECRET),
    ];
    let carries = |bytes: &[u8]| {
        forms
            .iter()
            .any(|form| bytes.windows(form.len()).any(|w| w == form.as_bytes()))
    };
    for (name, value) in &seen.headers {
        if attached_in.contains(&name.as_str()) {
            continue;
        }
        assert!(
            !carries(value.as_bytes()),
            "the secret reached the upstream in header {name}"
        );
    }
    assert!(!carries(seen.path.as_bytes()), "the secret is in the path");
    assert!(
        !carries(seen.query.as_deref().unwrap_or_default().as_bytes()),
        "the secret is in the query"
    );
    assert!(!carries(&seen.body), "the secret is in the body");
}

/// `config_json` of binding `id` as the gateway reads it (`config_json::text`).
async fn stored_config(s: &Scenario, id: &str) -> anyhow::Result<String> {
    let mut conn = s.db.admin().await?;
    Ok(sqlx::query_scalar(
        "SELECT config_json::text FROM caracal.resource_plugin_bindings WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await?)
}

/// `len` bytes of every value, from a fixed sequence.
fn body_of(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state.to_be_bytes()[0]
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One test per fixture of `plugins/fixtures/`, named after it: `for_each_fixture!` makes a
/// fixture without a test here fail to compile.
mod plugin_fixtures {
    use super::*;

    macro_rules! assert_fixture_has_a_test {
        ($name:ident, $path:expr) => {
            #[expect(unused_imports, reason = "only checks that the fixture has a test")]
            use self::$name as _;
        };
    }
    tests_fixtures::for_each_fixture!(assert_fixture_has_a_test);

    #[tokio::test]
    async fn fixture_allow() -> anyhow::Result<()> {
        let s = start(
            &[ALLOW],
            vec![
                PluginBinding::authorizer("bind-allow", "res-echo", ALLOW.id)
                    .deadline_ms(ROOMY_DEADLINE_MS),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        let (resp, id) = get(&s, RESOURCE, "/items?q=1").await;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        assert_eq!(s.upstream.requests().len(), 1);
        let seen = s.upstream.last().expect("the upstream saw the call");
        assert_eq!(seen.path, "/base/items");
        let event = audit_one(&from, &id).await?;
        assert_eq!(event["decision"], "allow", "{event}");
        // The plugin saw the path as the upstream receives it (gateway.wit, request-head.path).
        assert_eq!(
            plugins_of(&event),
            &json!([{
                "plugin": "allow",
                "plugin_id": ALLOW.id,
                "hook": "authorizer",
                "outcome": "allow",
                "attributes": {"seen": "GET /base/items"},
            }]),
            "{event}"
        );
        s.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn fixture_deny() -> anyhow::Result<()> {
        let s = start(
            &[DENY],
            vec![
                PluginBinding::authorizer("bind-deny", "res-echo", DENY.id)
                    .deadline_ms(ROOMY_DEADLINE_MS),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        let (resp, id) = get(&s, RESOURCE, "/items").await;
        // Settled point 7: the client sees the plugin's name and its reason.
        assert_denied(
            &resp,
            403,
            "access_denied",
            "denied by plugin deny: fixture says no",
        );
        assert!(
            s.upstream.requests().is_empty(),
            "the upstream was not reached"
        );
        let event = audit_one(&from, &id).await?;
        assert_eq!(event["decision"], "deny", "{event}");
        assert_eq!(event["metadata_json"]["reason"], "plugin_denied", "{event}");
        assert_eq!(
            plugins_of(&event),
            &json!([{
                "plugin": "deny",
                "plugin_id": DENY.id,
                "hook": "authorizer",
                "outcome": "deny",
                "reason": "fixture says no",
                "attributes": {},
            }]),
            "{event}"
        );
        s.stop().await;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fixture_loop() -> anyhow::Result<()> {
        const DEADLINE_MS: i32 = 20;
        let s = Arc::new(
            start(
                &[LOOP],
                vec![
                    PluginBinding::authorizer("bind-loop", "res-echo", LOOP.id)
                        .deadline_ms(DEADLINE_MS),
                ],
            )
            .await?,
        );
        let from = audit_tip().await?;
        // Hostile calls and ordinary calls to another resource of the same gateway, at once.
        let mut hostile = Vec::new();
        for _ in 0..2 {
            let s = Arc::clone(&s);
            hostile.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..5 {
                    let started = Instant::now();
                    let (resp, id) = get(&s, RESOURCE, "/items").await;
                    answers.push((resp, id, started.elapsed()));
                }
                answers
            }));
        }
        let mut ordinary = Vec::new();
        for _ in 0..2 {
            let s = Arc::clone(&s);
            ordinary.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..10 {
                    let (resp, _id) = get(&s, OTHER, "/items").await;
                    statuses.push(resp.status);
                }
                statuses
            }));
        }
        let mut ids = Vec::new();
        for task in hostile {
            for (resp, id, elapsed) in task.await? {
                assert_denied(&resp, 503, "plugin_failed", "plugin loop failed");
                assert!(
                    elapsed < Duration::from_secs(2),
                    "denied within the deadline, not after {elapsed:?}"
                );
                ids.push(id);
            }
        }
        for task in ordinary {
            let statuses = task.await?;
            assert!(
                statuses.iter().all(|status| *status == 200),
                "ordinary calls kept succeeding: {statuses:?}"
            );
        }
        let seen = s.upstream.requests();
        assert_eq!(
            seen.len(),
            20,
            "only the ordinary calls reached the upstream"
        );
        assert!(seen.iter().all(|r| r.path == "/items"), "{seen:?}");
        let events = audit_of(&from, &ids).await?;
        for id in &ids {
            let event = request_event(&events, id).expect("the event");
            let record = &plugins_of(event)[0];
            assert_eq!(record["plugin"], "loop", "{event}");
            assert_eq!(record["outcome"], "failed", "{event}");
            assert_eq!(record["cause"], "timeout", "{event}");
        }
        let s = Arc::into_inner(s).expect("the callers are done");
        s.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn fixture_memory() -> anyhow::Result<()> {
        let s = start(
            &[MEMORY],
            vec![
                PluginBinding::authorizer("bind-memory", "res-echo", MEMORY.id)
                    .deadline_ms(ROOMY_DEADLINE_MS)
                    .memory_limit_bytes(8 * 1024 * 1024),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        let (resp, id) = get(&s, RESOURCE, "/items").await;
        let detail =
            assert_plugin_failed(&resp, &id, &from, MEMORY, "authorizer", "memory_limit").await?;
        assert!(detail.contains("8388608 bytes"), "{detail}");
        assert!(s.upstream.requests().is_empty());
        s.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn fixture_trap() -> anyhow::Result<()> {
        let s = start(
            &[TRAP],
            vec![
                PluginBinding::authorizer("bind-trap", "res-echo", TRAP.id)
                    .deadline_ms(ROOMY_DEADLINE_MS),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        let (resp, id) = get(&s, RESOURCE, "/items").await;
        assert_plugin_failed(&resp, &id, &from, TRAP, "authorizer", "trap").await?;
        assert!(
            !String::from_utf8_lossy(&resp.body).contains("trapping on purpose"),
            "the client never sees the trap message"
        );
        assert!(s.upstream.requests().is_empty());
        s.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn fixture_forbidden_header() -> anyhow::Result<()> {
        let s = start(
            &[FORBIDDEN_HEADER],
            vec![
                PluginBinding::injector(
                    "bind-forbidden",
                    "res-echo",
                    FORBIDDEN_HEADER.id,
                    "augment",
                )
                .deadline_ms(ROOMY_DEADLINE_MS),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        for (write, refused) in [
            (
                "authorization",
                "credential header authorization can only be written with attach-header",
            ),
            (
                "x-caracal-user",
                "header x-caracal-user is reserved for the gateway",
            ),
            ("host", "header host is reserved for the gateway"),
            (
                "second-credential",
                "a second write of credential header authorization",
            ),
        ] {
            change(
                &s,
                &format!(
                    "UPDATE resource_plugin_bindings SET config_json = '{{\"write\": \"{write}\"}}' \
                     WHERE id = 'bind-forbidden'"
                ),
            )
            .await?;
            let (resp, id) = get(&s, RESOURCE, "/items").await;
            let detail = assert_plugin_failed(
                &resp,
                &id,
                &from,
                FORBIDDEN_HEADER,
                "injector",
                "bad_output",
            )
            .await?;
            assert!(detail.contains(refused), "{write}: {detail}");
        }
        assert!(
            s.upstream.requests().is_empty(),
            "nothing reached the upstream"
        );
        s.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn fixture_oversize() -> anyhow::Result<()> {
        let s = start(
            &[OVERSIZE],
            vec![
                PluginBinding::injector("bind-oversize", "res-echo", OVERSIZE.id, "augment")
                    .deadline_ms(ROOMY_DEADLINE_MS)
                    .memory_limit_bytes(64 * 1024 * 1024),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        for (output, refused) in [
            ("many-operations", "100000 operations, more than 32"),
            ("huge-value", "more than 32768"),
        ] {
            change(
                &s,
                &format!(
                    "UPDATE resource_plugin_bindings SET config_json = '{{\"output\": \"{output}\"}}' \
                     WHERE id = 'bind-oversize'"
                ),
            )
            .await?;
            let (resp, id) = get(&s, RESOURCE, "/items").await;
            let detail =
                assert_plugin_failed(&resp, &id, &from, OVERSIZE, "injector", "bad_output").await?;
            assert!(detail.contains(refused), "{output}: {detail}");
        }
        assert!(
            s.upstream.requests().is_empty(),
            "nothing reached the upstream"
        );
        s.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn fixture_wrong_world() -> anyhow::Result<()> {
        // Stored directly: the admin API refuses the upload.
        let s = start(
            &[WRONG_WORLD],
            vec![
                PluginBinding::authorizer("bind-wrong-world", "res-echo", WRONG_WORLD.id)
                    .deadline_ms(ROOMY_DEADLINE_MS),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        let (resp, id) = get(&s, RESOURCE, "/items").await;
        let detail =
            assert_plugin_failed(&resp, &id, &from, WRONG_WORLD, "authorizer", "unavailable")
                .await?;
        assert!(
            detail.contains("does not implement world authorizer"),
            "{detail}"
        );
        assert!(s.upstream.requests().is_empty());
        // The other resource of the zone is not affected.
        let (resp, _id) = get(&s, OTHER, "/items").await;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        s.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn fixture_echo_injector() -> anyhow::Result<()> {
        let s = start(
            &[ECHO_INJECTOR],
            vec![
                PluginBinding::injector("bind-echo", "res-echo", ECHO_INJECTOR.id, "replace")
                    .deadline_ms(ROOMY_DEADLINE_MS),
            ],
        )
        .await?;
        let from = audit_tip().await?;
        let (resp, first) = get(&s, RESOURCE, "/items").await;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        let seen = s.upstream.last().expect("the upstream saw the call");
        assert_eq!(header(&seen, "x-upstream-key").as_deref(), Some(SECRET));
        assert_eq!(
            header(&seen, "x-plugin-config"),
            Some(stored_config(&s, "bind-echo").await?)
        );
        assert!(seen.headers.get("x-body-sha256").is_none());
        assert!(
            seen.headers.get("x-api-key").is_none(),
            "mode replace: no built-in placement"
        );
        assert_secret_only_in(&seen, &["x-upstream-key"]);

        // With the digest: the gateway reads the body, hashes it and forwards it whole.
        change(
            &s,
            "UPDATE resource_plugin_bindings SET config_json = '{\"digest\": true}' WHERE id = 'bind-echo'",
        )
        .await?;
        let body = body_of(200_000);
        let (resp, second) = send(
            &s,
            RESOURCE,
            "POST",
            "/items",
            &[("content-type", "application/octet-stream")],
            &body,
        )
        .await;
        assert_eq!(resp.status, 200, "{:?}", resp.json());
        let seen = s.upstream.last().expect("the upstream saw the call");
        assert_eq!(seen.method, "POST");
        assert!(seen.body == body, "the body arrived intact");
        assert_eq!(header(&seen, "x-body-sha256"), Some(sha256_hex(&seen.body)));
        let config = stored_config(&s, "bind-echo").await?;
        assert_eq!(config, r#"{"digest": true}"#);
        assert_eq!(header(&seen, "x-plugin-config"), Some(config));
        assert_eq!(header(&seen, "x-upstream-key").as_deref(), Some(SECRET));
        assert_secret_only_in(&seen, &["x-upstream-key"]);

        let events = audit_of(&from, &[first.clone(), second.clone()]).await?;
        for (id, operations) in [(&first, 2), (&second, 3)] {
            let event = request_event(&events, id).expect("the event");
            assert_eq!(event["decision"], "allow", "{event}");
            assert_eq!(
                plugins_of(event),
                &json!([{
                    "plugin": "echo-injector",
                    "plugin_id": ECHO_INJECTOR.id,
                    "hook": "injector",
                    "outcome": "injected",
                    "operations": operations,
                }]),
                "{event}"
            );
        }
        s.stop().await;
        Ok(())
    }
}

#[tokio::test]
async fn example_request_rules_allows_only_what_its_rules_allow() -> anyhow::Result<()> {
    let s = start(
        &[RULES],
        vec![
            PluginBinding::authorizer("bind-rules", "res-other", RULES.id)
                .config(json!({"methods": ["GET"], "path_prefixes": ["/items"]}))
                .deadline_ms(ROOMY_DEADLINE_MS),
        ],
    )
    .await?;
    let from = audit_tip().await?;
    let (resp, allowed) = get(&s, OTHER, "/items/7").await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let (resp, method) = send(&s, OTHER, "POST", "/items/7", &[], b"{}").await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "denied by plugin rules: method POST is not allowed (rule methods)",
    );
    let (resp, path) = get(&s, OTHER, "/admin").await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "denied by plugin rules: path /admin is not under an allowed prefix (rule path_prefixes)",
    );
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1, "only the allowed call reached the upstream");
    assert_eq!(seen[0].path, "/items/7");

    let events = audit_of(&from, &[allowed.clone(), method.clone(), path.clone()]).await?;
    let record = |id: &str| plugins_of(request_event(&events, id).expect("the event")).clone();
    assert_eq!(
        record(&allowed),
        json!([{"plugin": "rules", "plugin_id": RULES.id, "hook": "authorizer", "outcome": "allow",
                "attributes": {"rule": "request-rules"}}])
    );
    assert_eq!(
        record(&method),
        json!([{"plugin": "rules", "plugin_id": RULES.id, "hook": "authorizer", "outcome": "deny",
                "reason": "method POST is not allowed (rule methods)",
                "attributes": {"rule": "request-rules", "violated": "methods"}}])
    );
    assert_eq!(
        record(&path),
        json!([{"plugin": "rules", "plugin_id": RULES.id, "hook": "authorizer", "outcome": "deny",
                "reason": "path /admin is not under an allowed prefix (rule path_prefixes)",
                "attributes": {"rule": "request-rules", "violated": "path_prefixes"}}])
    );
    s.stop().await;
    Ok(())
}

/// What an upstream does to verify `example-request-signing` (its crate docs): the canonical
/// string of the request it received, MACed with the shared key, in Base64.
fn expected_signature(seen: &Recorded, date: &str) -> String {
    let target = match &seen.query {
        Some(query) => format!("{}?{query}", seen.path),
        None => seen.path.clone(),
    };
    let canonical = format!(
        "{}\n{target}\n{date}\n{}",
        seen.method,
        sha256_hex(&seen.body)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(canonical.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn example_request_signing_signs_with_a_key_it_never_sees() -> anyhow::Result<()> {
    let s = start(
        &[SIGNING],
        vec![
            PluginBinding::injector("bind-signing", "res-echo", SIGNING.id, "replace")
                .config(json!({"key_id": "key-2026"}))
                .deadline_ms(ROOMY_DEADLINE_MS),
        ],
    )
    .await?;
    let from = audit_tip().await?;
    let mut ids = Vec::new();
    for (method, path, body) in [
        (
            "POST",
            "/items?b=2&a=%2F1",
            br#"{"name":"widget"}"#.as_slice(),
        ),
        ("GET", "/items", b"".as_slice()),
    ] {
        let (resp, id) = send(&s, RESOURCE, method, path, &[], body).await;
        assert_eq!(resp.status, 200, "{method} {path}: {:?}", resp.json());
        ids.push(id);
        let seen = s.upstream.last().expect("the upstream saw the call");
        assert_eq!(seen.body.as_ref(), body);
        let date = header(&seen, "x-signature-date").expect("the date header");
        let signed = chrono::DateTime::parse_from_rfc3339(&date)?;
        assert!(date.len() == 20 && date.ends_with('Z'), "{date}");
        let skew = (chrono::Utc::now().timestamp() - signed.timestamp()).abs();
        assert!(skew < 60, "the gateway's clock: {date}");
        assert_eq!(
            header(&seen, "x-signature"),
            Some(format!(
                "keyId=key-2026,signature={}",
                expected_signature(&seen, &date)
            )),
            "{method} {path}"
        );
        assert!(
            seen.headers.get("x-api-key").is_none(),
            "mode replace: the key is not placed"
        );
        assert_secret_only_in(&seen, &[]);
    }
    let events = audit_of(&from, &ids).await?;
    for id in &ids {
        let event = request_event(&events, id).expect("the event");
        assert_eq!(
            plugins_of(event),
            &json!([{"plugin": "signing", "plugin_id": SIGNING.id, "hook": "injector",
                     "outcome": "injected", "operations": 2}]),
            "{event}"
        );
    }
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn example_header_mapping_places_the_credential_and_maps_headers() -> anyhow::Result<()> {
    let s = start(
        &[HEADER_MAPPING],
        vec![
            PluginBinding::injector("bind-mapping", "res-echo", HEADER_MAPPING.id, "replace")
                .config(json!({
                    "credential_header": "x-api-token",
                    "scheme": "Token",
                    "set": {"x-static": "v"},
                    "remove": ["x-debug"],
                    "copy": {"x-tenant": "x-upstream-tenant"},
                }))
                .deadline_ms(ROOMY_DEADLINE_MS),
        ],
    )
    .await?;
    let from = audit_tip().await?;
    let (resp, id) = send(
        &s,
        RESOURCE,
        "GET",
        "/items",
        &[("x-debug", "1"), ("x-tenant", "blue")],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().expect("the upstream saw the call");
    assert_eq!(
        header(&seen, "x-api-token"),
        Some(format!("Token {SECRET}"))
    );
    assert_eq!(header(&seen, "x-static").as_deref(), Some("v"));
    assert!(seen.headers.get("x-debug").is_none(), "removed");
    assert_eq!(header(&seen, "x-upstream-tenant").as_deref(), Some("blue"));
    assert_eq!(header(&seen, "x-tenant").as_deref(), Some("blue"));
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "mode replace: the built-in header is not written"
    );
    assert_secret_only_in(&seen, &["x-api-token"]);
    let event = audit_one(&from, &id).await?;
    assert_eq!(
        plugins_of(&event),
        &json!([{"plugin": "header-mapping", "plugin_id": HEADER_MAPPING.id, "hook": "injector",
                 "outcome": "injected", "operations": 4}]),
        "{event}"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_augmenting_injector_adds_to_the_builtin_placement_and_a_replacing_one_takes_its_place()
-> anyhow::Result<()> {
    let s = start(
        &[ECHO_INJECTOR],
        vec![
            PluginBinding::injector("bind-echo", "res-echo", ECHO_INJECTOR.id, "augment")
                .deadline_ms(ROOMY_DEADLINE_MS),
        ],
    )
    .await?;
    let from = audit_tip().await?;
    let (resp, augment) = get(&s, RESOURCE, "/items").await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().expect("the upstream saw the call");
    assert_eq!(
        header(&seen, "x-api-key").as_deref(),
        Some(SECRET),
        "the built-in placement"
    );
    assert_eq!(
        header(&seen, "x-upstream-key").as_deref(),
        Some(SECRET),
        "the plugin's header"
    );
    assert_secret_only_in(&seen, &["x-api-key", "x-upstream-key"]);

    change(
        &s,
        "UPDATE resource_plugin_bindings SET mode = 'replace' WHERE id = 'bind-echo'",
    )
    .await?;
    let (resp, replace) = get(&s, RESOURCE, "/items").await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let seen = s.upstream.last().expect("the upstream saw the call");
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the built-in placement is skipped"
    );
    assert_eq!(header(&seen, "x-upstream-key").as_deref(), Some(SECRET));
    assert_secret_only_in(&seen, &["x-upstream-key"]);
    let events = audit_of(&from, &[augment.clone(), replace.clone()]).await?;
    for id in [&augment, &replace] {
        let event = request_event(&events, id).expect("the event");
        assert_eq!(plugins_of(event)[0]["outcome"], "injected", "{event}");
    }
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_under_load_fails_no_request() -> anyhow::Result<()> {
    let rules_config = json!({"methods": ["GET"]});
    let s = Arc::new(
        start(
            &[ALLOW, RULES],
            vec![
                PluginBinding::authorizer("bind-swap", "res-echo", ALLOW.id)
                    .deadline_ms(ROOMY_DEADLINE_MS),
                // Both components stay in every snapshot, so a swap compiles nothing.
                PluginBinding::authorizer("bind-keep-rules", "res-other", RULES.id)
                    .config(rules_config.clone())
                    .deadline_ms(ROOMY_DEADLINE_MS),
                PluginBinding::authorizer("bind-keep-allow", "res-other", ALLOW.id)
                    .position(1)
                    .deadline_ms(ROOMY_DEADLINE_MS),
            ],
        )
        .await?,
    );
    let from = audit_tip().await?;
    let until = Instant::now() + Duration::from_secs(3);
    let mut callers = Vec::new();
    for _ in 0..2 {
        let s = Arc::clone(&s);
        callers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while Instant::now() < until {
                let (resp, id) = get(&s, RESOURCE, "/items").await;
                answers.push((resp.status, resp.json().unwrap_or(Value::Null), id));
            }
            answers
        }));
    }
    let to_rules = format!(
        "UPDATE resource_plugin_bindings SET plugin_id = '{}', config_json = '{rules_config}' \
         WHERE id = 'bind-swap'",
        RULES.id
    );
    let to_allow = format!(
        "UPDATE resource_plugin_bindings SET plugin_id = '{}', config_json = '{{}}' \
         WHERE id = 'bind-swap'",
        ALLOW.id
    );
    for sql in [&to_rules, &to_allow, &to_rules, &to_allow] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        change(&s, sql).await?;
    }
    let mut answers = Vec::new();
    for caller in callers {
        answers.extend(caller.await?);
    }
    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed calls: {failed:?}",
        failed.len()
    );
    assert!(
        answers.len() >= 20,
        "a steady stream: {} calls",
        answers.len()
    );
    let ids: Vec<String> = answers.into_iter().map(|(_, _, id)| id).collect();
    let events = audit_of(&from, &ids).await?;
    let used: HashSet<String> = ids
        .iter()
        .map(|id| {
            let event = request_event(&events, id).expect("the event");
            let records = plugins_of(event);
            assert_eq!(records.as_array().map(Vec::len), Some(1), "{event}");
            assert_eq!(records[0]["outcome"], "allow", "{event}");
            records[0]["plugin"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        used,
        HashSet::from(["allow".to_owned(), "rules".to_owned()]),
        "both plugins served calls"
    );
    let s = Arc::into_inner(s).expect("the callers are done");
    s.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The standalone sidecar: plugins named in its file
// ---------------------------------------------------------------------------------------

const SA_ZONE: &str = "sa-plugin-zone";
const SA_ISSUER: &str = "http://sts.plugins.invalid";
const SA_APP: &str = "agent-app";
const SA_RESOURCE: &str = "resource://crm";

const SA_POLICY: &str = r#"package caracal.authz
import rego.v1
# caracal:data-document
app_ids := {"agent": "agent-app"}
grants := {
  "resource://crm": {"application": "agent", "roles": {"reader": ["read"]}}
}
"#;

/// The sidecar's file; `{upstream}` and `{plugins}` (the inside of the resource's `plugins`
/// array) are filled in.
const SA_CONFIG: &str = r#"
listen = "127.0.0.1:0"
issuer = "http://sts.plugins.invalid"
audit_replay_dir = "replay"

[[zones]]
id = "sa-plugin-zone"
key_files = ["zone.jwk.json"]
policy_files = ["zone.rego"]
[[zones.applications]]
id = "agent-app"
labels = ["reader"]

[[providers]]
id = "open"
zone = "sa-plugin-zone"
kind = "none"

[[resources]]
zone = "sa-plugin-zone"
identifier = "resource://crm"
upstream = "{upstream}/api"
provider = "open"
scopes = ["read"]
enforcement = "transport_uniform"
plugins = [{plugins}]
"#;

/// A directory removed when dropped, holding a sidecar's file and what it names.
struct Scratch {
    dir: PathBuf,
    key: control_crypto::ZoneSigningKey,
    kid: String,
}

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("caracal-plugins-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let key = control_crypto::ZoneSigningKey::generate();
        let kid = format!("kid-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(
            dir.join("zone.jwk.json"),
            key.public_key().to_jwk(&kid).to_string(),
        )
        .expect("key file");
        std::fs::write(dir.join("zone.rego"), SA_POLICY).expect("policy file");
        Self { dir, key, kid }
    }

    /// Writes the sidecar's file with `plugins` and returns its path.
    fn config(&self, upstream: &str, plugins: &str) -> PathBuf {
        let path = self.dir.join("gateway.toml");
        let text = SA_CONFIG
            .replace("{upstream}", upstream)
            .replace("{plugins}", plugins);
        std::fs::write(&path, text).expect("config file");
        path
    }

    fn mandate(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        let sid = format!("rec-sa-plugins-{}", uuid::Uuid::new_v4().simple());
        let claims = json!({
            "iss": SA_ISSUER, "sub": SA_APP, "aud": [SA_ISSUER], "exp": now + 300, "iat": now,
            "jti": uuid::Uuid::now_v7().to_string(), "zone_id": SA_ZONE, "client_id": SA_APP,
            "scope": "read", "sid": sid, "root_sid": sid, "use": "gateway",
            "sub_type": "application", "target": [SA_RESOURCE],
            "delegation_edge_id": format!("edge-{sid}"),
        });
        self.key
            .sign_jwt(&self.kid, &serde_json::to_vec(&claims).expect("claims"))
            .expect("sign")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a sidecar from `file` without Redis.
async fn start_sidecar(
    file: &Path,
) -> Result<gateway_proxy::GatewayHandle, gateway_proxy::GatewayStartError> {
    let env = std::collections::HashMap::from([
        ("STREAMS_HMAC_KEY".to_owned(), STREAMS_KEY_HEX.to_owned()),
        (
            "CARACAL_INSTANCE_ID".to_owned(),
            format!("gw-sa-plugins-{}", uuid::Uuid::new_v4().simple()),
        ),
    ]);
    let lookup = move |name: &str| env.get(name).cloned().filter(|v| !v.is_empty());
    gateway_proxy::start_standalone(file, &lookup).await
}

/// The one-line start error of a sidecar whose file is `file`.
async fn start_error(file: &Path) -> String {
    match start_sidecar(file).await {
        Ok(handle) => {
            handle.stop().await;
            panic!("the sidecar started");
        }
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn standalone_runs_the_plugins_its_file_names() -> anyhow::Result<()> {
    let scratch = Scratch::new();
    let upstream = Upstream::start().await?;
    let file = scratch.config(
        &upstream.url(""),
        &format!(
            r#"{{ name = "rules", hook = "authorizer", file = "{}", deadline_ms = {ROOMY_DEADLINE_MS}, config = {{ methods = ["GET"] }} }}"#,
            tests_fixtures::EXAMPLE_REQUEST_RULES
        ),
    );
    let gateway = start_sidecar(&file).await?;
    let call = |method: &'static str| {
        let auth = format!("Bearer {}", scratch.mandate());
        let addr = gateway.addr;
        async move {
            http::request(
                addr,
                method,
                "/contacts",
                &[
                    ("authorization", auth.as_str()),
                    ("x-caracal-resource", SA_RESOURCE),
                ],
                "",
            )
            .await
            .expect("sidecar request")
        }
    };
    let resp = call("GET").await;
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    let resp = call("POST").await;
    assert_denied(
        &resp,
        403,
        "access_denied",
        "denied by plugin rules: method POST is not allowed (rule methods)",
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "only the GET reached the upstream");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/api/contacts");
    gateway.stop().await;
    Ok(())
}

#[tokio::test]
async fn standalone_refuses_to_start_with_a_plugin_config_the_plugin_refuses() -> anyhow::Result<()>
{
    let scratch = Scratch::new();
    let file = scratch.config(
        "http://127.0.0.1:9",
        &format!(
            r#"{{ name = "rules", hook = "authorizer", file = "{}", config = {{ verbs = ["GET"] }} }}"#,
            tests_fixtures::EXAMPLE_REQUEST_RULES
        ),
    );
    let error = start_error(&file).await;
    assert!(
        error.starts_with(&file.display().to_string()),
        "names the file: {error}"
    );
    assert!(
        error.contains("resources[resource://crm].plugins[rules].config: the plugin refused it"),
        "{error}"
    );
    assert!(error.contains("unknown field `verbs`"), "{error}");
    assert!(!error.contains('\n'), "one line: {error:?}");
    Ok(())
}

#[tokio::test]
async fn standalone_refuses_to_start_with_a_plugin_file_that_does_not_exist() -> anyhow::Result<()>
{
    let scratch = Scratch::new();
    let file = scratch.config(
        "http://127.0.0.1:9",
        r#"{ name = "rules", hook = "authorizer", file = "plugins/absent.wasm" }"#,
    );
    let error = start_error(&file).await;
    assert!(
        error.starts_with(&file.display().to_string()),
        "names the file: {error}"
    );
    assert!(
        error.contains("resources[resource://crm].plugins[0].file: cannot read"),
        "{error}"
    );
    assert!(error.contains("plugins/absent.wasm"), "{error}");
    assert!(!error.contains('\n'), "one line: {error:?}");
    Ok(())
}
