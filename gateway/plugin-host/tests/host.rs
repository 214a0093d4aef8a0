//! The host against the real components of `plugins/` (built by `tests-fixtures`): every
//! example and every hostile fixture, through compile, configure and a call under limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly, like the tests themselves"
)]

use std::{sync::Arc, time::Duration};

use gateway_plugin_host::{
    Authorization, Call, CallLimits, CompiledPlugin, CredentialKind, CredentialSet, FailureCause,
    HostConfig, HostCredential, LoadError, Mandate, PluginHost, Principal, RequestHead, Resource,
    World,
    ops::{CheckedOp, InjectRules},
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

fn host() -> PluginHost {
    PluginHost::start(HostConfig::default()).unwrap()
}

fn compile(host: &PluginHost, world: World, path: &str) -> CompiledPlugin {
    let bytes = tests_fixtures::read(path).unwrap();
    host.compile(world, &bytes).unwrap()
}

fn call(method: &str, path: &str, config: &str) -> Call {
    Call {
        request_id: "req-1".into(),
        now_unix_ms: 1_767_261_600_000, // 2026-01-01T10:00:00Z, a Thursday
        request: RequestHead {
            method: method.into(),
            path: path.into(),
            query: None,
            headers: vec![],
            body_sha256: None,
        },
        principal: Principal {
            application_id: "app-1".into(),
            zone_id: "zone-1".into(),
            registration_method: "admin".into(),
            agent_session_id: None,
            lifecycle: None,
            labels: vec![],
        },
        mandate: Mandate {
            subject: "app-1".into(),
            session_id: "sid-1".into(),
            scopes: vec!["read".into()],
            delegation_edge_id: None,
            hop_count: 0,
            token_id: "jti-1".into(),
            issued_at: 1_767_261_590,
            expires_at: 1_767_261_900,
        },
        resource: Resource {
            id: "res-1".into(),
            identifier: "resource://crm".into(),
            upstream_url: "http://127.0.0.1:9/".into(),
            scopes: vec!["read".into()],
            auth_mode: "api_key".into(),
        },
        config: config.into(),
    }
}

fn limits() -> CallLimits {
    CallLimits {
        deadline: Duration::from_millis(200),
        memory_bytes: 16 * 1024 * 1024,
    }
}

/// For fixtures whose subject is not time: a deadline no loaded test machine reaches, so the
/// failure seen is the one under test (an unoptimised guest building thousands of header
/// operations took over 200 ms while other tests ran on both cores).
fn unhurried() -> CallLimits {
    CallLimits {
        deadline: Duration::from_secs(10),
        ..limits()
    }
}

fn primary(secret: &str) -> Arc<CredentialSet> {
    let mut set = CredentialSet::new();
    set.insert(HostCredential::new(
        "primary",
        CredentialKind::ApiKey,
        Zeroizing::new(secret.as_bytes().to_vec()),
    ));
    Arc::new(set)
}

async fn failure_of_authorize(path: &str, limits: CallLimits) -> FailureCause {
    let host = host();
    let plugin = compile(&host, World::Authorizer, path);
    match host
        .authorize(&plugin, &call("GET", "/", "{}"), limits)
        .await
    {
        Ok(outcome) => panic!("expected a failure, got {outcome:?}"),
        Err(failure) => failure.cause,
    }
}

async fn inject(
    path: &str,
    config: &str,
) -> Result<Vec<CheckedOp>, gateway_plugin_host::PluginFailure> {
    inject_within(path, config, limits()).await
}

async fn inject_within(
    path: &str,
    config: &str,
    limits: CallLimits,
) -> Result<Vec<CheckedOp>, gateway_plugin_host::PluginFailure> {
    let host = host();
    let plugin = compile(&host, World::CredentialInjector, path);
    host.inject(
        &plugin,
        &call("GET", "/items", config),
        primary("k-123"),
        &InjectRules::default(),
        limits,
    )
    .await
}

mod plugin_fixtures {
    use super::*;

    macro_rules! every_fixture_has_a_test {
        ($name:ident, $path:expr) => {
            #[expect(unused_imports, reason = "only checks that the test exists")]
            use self::$name as _;
        };
    }
    tests_fixtures::for_each_fixture!(every_fixture_has_a_test);

    #[tokio::test]
    async fn fixture_allow() {
        let host = host();
        let plugin = compile(&host, World::Authorizer, tests_fixtures::FIXTURE_ALLOW);
        let outcome = host
            .authorize(&plugin, &call("POST", "/items/7", "{}"), limits())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Authorization::Allow {
                attributes: vec![("seen".into(), "POST /items/7".into())]
            }
        );
    }

    #[tokio::test]
    async fn fixture_deny() {
        let host = host();
        let plugin = compile(&host, World::Authorizer, tests_fixtures::FIXTURE_DENY);
        let outcome = host
            .authorize(&plugin, &call("GET", "/", "{}"), limits())
            .await
            .unwrap();
        assert!(
            matches!(&outcome, Authorization::Deny { reason, .. } if reason == "fixture says no"),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn fixture_loop() {
        let host = host();
        // Compiling is outside the measured span: unoptimised cranelift on a busy CI
        // machine can take seconds, and only the call's own bound is under test.
        let plugin = compile(&host, World::Authorizer, tests_fixtures::FIXTURE_LOOP);
        let limits = CallLimits {
            deadline: Duration::from_millis(20),
            ..limits()
        };
        let started = tokio::time::Instant::now();
        let failure = host
            .authorize(&plugin, &call("GET", "/", "{}"), limits)
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(failure.cause, FailureCause::Timeout);
        // Stopped at its deadline, not after some unrelated, much longer bound.
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[tokio::test]
    async fn fixture_memory() {
        let cause = failure_of_authorize(tests_fixtures::FIXTURE_MEMORY, limits()).await;
        assert_eq!(cause, FailureCause::MemoryLimit);
    }

    #[tokio::test]
    async fn fixture_trap() {
        let cause = failure_of_authorize(tests_fixtures::FIXTURE_TRAP, limits()).await;
        assert_eq!(cause, FailureCause::Trap);
    }

    #[tokio::test]
    async fn fixture_forbidden_header() {
        for write in [
            "authorization",
            "x-caracal-user",
            "host",
            "second-credential",
        ] {
            let config = format!(r#"{{"write":"{write}"}}"#);
            let failure = inject(tests_fixtures::FIXTURE_FORBIDDEN_HEADER, &config)
                .await
                .unwrap_err();
            assert_eq!(failure.cause, FailureCause::BadOutput, "{write}: {failure}");
        }
    }

    #[tokio::test]
    async fn fixture_oversize() {
        for output in ["many-operations", "huge-value"] {
            let config = format!(r#"{{"output":"{output}"}}"#);
            let failure = inject_within(tests_fixtures::FIXTURE_OVERSIZE, &config, unhurried())
                .await
                .unwrap_err();
            assert_eq!(
                failure.cause,
                FailureCause::BadOutput,
                "{output}: {failure}"
            );
        }
    }

    #[tokio::test]
    async fn fixture_wrong_world() {
        let host = host();
        let bytes = tests_fixtures::read(tests_fixtures::FIXTURE_WRONG_WORLD).unwrap();
        for world in [World::Authorizer, World::CredentialInjector] {
            let error = host.compile(world, &bytes).unwrap_err();
            assert!(matches!(error, LoadError::WrongWorld { .. }), "{error}");
        }
    }

    #[tokio::test]
    async fn fixture_echo_injector() {
        let ops = inject(tests_fixtures::FIXTURE_ECHO_INJECTOR, "{}")
            .await
            .unwrap();
        assert_eq!(ops.len(), 2);
        assert!(
            matches!(&ops[0], CheckedOp::AttachHeader { name, handle, scheme: None } if name == "x-upstream-key" && handle == "primary")
        );
        assert!(
            matches!(&ops[1], CheckedOp::SetHeader { name, value } if name == "x-plugin-config" && value == "{}")
        );
    }
}

#[tokio::test]
async fn an_injector_compiled_as_an_authorizer_is_refused_at_load() {
    let host = host();
    let bytes = tests_fixtures::read(tests_fixtures::FIXTURE_ECHO_INJECTOR).unwrap();
    let error = host.compile(World::Authorizer, &bytes).unwrap_err();
    assert!(
        matches!(
            error,
            LoadError::WrongWorld {
                world: World::Authorizer,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused() {
    let host = host();
    let core_module = b"\0asm\x01\0\0\0";
    assert!(matches!(
        host.compile(World::Authorizer, core_module),
        Err(LoadError::NotAComponent(_))
    ));
    assert!(matches!(
        host.compile(World::Authorizer, b"not wasm at all"),
        Err(LoadError::NotAComponent(_))
    ));
}

#[tokio::test]
async fn configure_reports_what_the_plugin_needs_and_refuses_bad_configs() {
    let host = host();
    let echo = compile(
        &host,
        World::CredentialInjector,
        tests_fixtures::FIXTURE_ECHO_INJECTOR,
    );
    assert!(
        !host
            .configure(&echo, "{}", limits())
            .await
            .unwrap()
            .body_sha256
    );
    assert!(
        host.configure(&echo, r#"{"digest":true}"#, limits())
            .await
            .unwrap()
            .body_sha256
    );
    let refused = host
        .configure(&echo, r#"{"digest":"yes"}"#, limits())
        .await
        .unwrap_err();
    assert_eq!(refused.cause, FailureCause::GuestError);
}

#[tokio::test]
async fn the_request_rules_example_allows_and_denies_from_its_config() {
    let host = host();
    let rules = compile(
        &host,
        World::Authorizer,
        tests_fixtures::EXAMPLE_REQUEST_RULES,
    );
    let config = r#"{"methods":["GET"],"path_prefixes":["/items"]}"#;
    host.configure(&rules, config, limits()).await.unwrap();
    let allowed = host
        .authorize(&rules, &call("GET", "/items/1", config), limits())
        .await;
    assert!(
        matches!(allowed, Ok(Authorization::Allow { .. })),
        "{allowed:?}"
    );
    let denied = host
        .authorize(&rules, &call("DELETE", "/items/1", config), limits())
        .await;
    assert!(
        matches!(denied, Ok(Authorization::Deny { .. })),
        "{denied:?}"
    );
    let outside = host
        .authorize(&rules, &call("GET", "/admin", config), limits())
        .await;
    assert!(
        matches!(outside, Ok(Authorization::Deny { .. })),
        "{outside:?}"
    );
    let bad = host
        .configure(&rules, r#"{"hours_utc":{"from":30,"to":2}}"#, limits())
        .await
        .unwrap_err();
    assert_eq!(bad.cause, FailureCause::GuestError);
}

#[tokio::test]
async fn the_signing_example_signs_with_a_key_it_never_sees() {
    let host = host();
    let signer = compile(
        &host,
        World::CredentialInjector,
        tests_fixtures::EXAMPLE_REQUEST_SIGNING,
    );
    let needs = host.configure(&signer, "{}", limits()).await.unwrap();
    assert!(needs.body_sha256);
    let mut request = call("POST", "/items", "{}");
    let body_digest = Sha256::digest(b"{\"a\":1}").to_vec();
    request.request.body_sha256 = Some(body_digest.clone());
    let ops = host
        .inject(
            &signer,
            &request,
            primary("signing-secret"),
            &InjectRules::default(),
            limits(),
        )
        .await
        .unwrap();
    let header = |wanted: &str| {
        ops.iter().find_map(|op| match op {
            CheckedOp::SetHeader { name, value } if name == wanted => {
                Some(value.to_str().unwrap().to_owned())
            }
            _ => None,
        })
    };
    let date = header("x-signature-date").expect("a date header");
    let signature = header("x-signature").expect("a signature header");
    let canonical = format!("POST\n/items\n{date}\n{}", hex::encode(&body_digest));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"signing-secret").unwrap();
    mac.update(canonical.as_bytes());
    let expected = mac.finalize().into_bytes();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(expected);
    assert!(
        signature.contains(&b64) || signature.contains(&hex::encode(expected)),
        "{signature} does not carry the MAC of {canonical:?}"
    );
    assert!(!signature.contains("signing-secret"));
}

#[tokio::test]
async fn the_header_mapping_example_attaches_and_maps() {
    let config = r#"{"credential_header":"x-api-token","scheme":"Token","set":{"x-static":"v"},"remove":["x-debug"]}"#;
    let ops = inject(tests_fixtures::EXAMPLE_HEADER_MAPPING, config)
        .await
        .unwrap();
    assert!(ops.iter().any(|op| matches!(op, CheckedOp::AttachHeader { name, handle, scheme: Some(s) } if name == "x-api-token" && handle == "primary" && s == "Token")));
    assert!(ops.iter().any(|op| matches!(op, CheckedOp::SetHeader { name, value } if name == "x-static" && value == "v")));
    assert!(
        ops.iter()
            .any(|op| matches!(op, CheckedOp::RemoveHeader { name } if name == "x-debug"))
    );
}

#[tokio::test]
async fn a_full_pool_fails_the_call_closed_within_its_deadline() {
    let host = PluginHost::start(HostConfig {
        max_concurrency: 1,
        ..HostConfig::default()
    })
    .unwrap();
    let looping = Arc::new(compile(
        &host,
        World::Authorizer,
        tests_fixtures::FIXTURE_LOOP,
    ));
    let allow = compile(&host, World::Authorizer, tests_fixtures::FIXTURE_ALLOW);
    let busy = {
        let host = host.clone();
        let looping = Arc::clone(&looping);
        tokio::spawn(async move {
            host.authorize(
                &looping,
                &call("GET", "/", "{}"),
                CallLimits {
                    deadline: Duration::from_millis(500),
                    ..limits()
                },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let starved = host
        .authorize(
            &allow,
            &call("GET", "/", "{}"),
            CallLimits {
                deadline: Duration::from_millis(20),
                ..limits()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(starved.cause, FailureCause::Capacity);
    assert_eq!(
        busy.await.unwrap().unwrap_err().cause,
        FailureCause::Timeout
    );
}

#[tokio::test]
async fn the_host_falls_back_or_pools_and_caps_binding_limits() {
    let host = PluginHost::start(HostConfig {
        max_memory_bytes: 32 * 1024 * 1024,
        ..HostConfig::default()
    })
    .unwrap();
    let capped = host.limits(Duration::from_secs(30), 1 << 30);
    assert_eq!(capped.deadline, Duration::from_secs(1));
    assert_eq!(capped.memory_bytes, 32 * 1024 * 1024);
    let on_demand = PluginHost::start(HostConfig {
        pooling: false,
        ..HostConfig::default()
    })
    .unwrap();
    assert!(!on_demand.pooling());
    // Either allocator runs the same plugin.
    let allow = compile(&on_demand, World::Authorizer, tests_fixtures::FIXTURE_ALLOW);
    assert!(
        on_demand
            .authorize(&allow, &call("GET", "/", "{}"), limits())
            .await
            .is_ok()
    );
}

#[test]
fn a_zero_concurrency_host_is_refused_at_start() {
    let error = PluginHost::start(HostConfig {
        max_concurrency: 0,
        ..HostConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("concurrency"), "{error}");
}
