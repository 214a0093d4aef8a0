//! Per-call overhead of a plugin, including instantiation from its `InstancePre` into a fresh
//! store (issue 6: ≤ 20 µs p50 for an authorizer and for an injector).
//!
//! Run with `cargo bench -p bench --bench plugins` (see bench/README.md); criterion's
//! `median` is the p50. Each series is one complete host call: take a pool slot, build the
//! store (limits, deadline, WASI context with everything denied), instantiate, call the export,
//! check the output.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "a benchmark harness: a failure to set up should stop it loudly"
)]

use std::{sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_plugin_host::{
    Call, CallLimits, CompiledPlugin, CredentialKind, CredentialSet, HostConfig, HostCredential,
    Mandate, PluginHost, Principal, RequestHead, Resource, World, ops::InjectRules,
};
use zeroize::Zeroizing;

fn call(config: &str) -> Call {
    Call {
        request_id: "01a2356f-abba-77eb-b8da-69fd7e24c8dd".into(),
        now_unix_ms: 1_767_261_600_000,
        request: RequestHead {
            method: "GET".into(),
            path: "/items/42".into(),
            query: Some("expand=true".into()),
            headers: vec![gateway_plugin_host::Header {
                name: "accept".into(),
                value: "application/json".into(),
            }],
            body_sha256: Some(vec![0x5a; 32]),
        },
        principal: Principal {
            application_id: "app-bench".into(),
            zone_id: "zone-bench".into(),
            registration_method: "admin".into(),
            agent_session_id: Some("agent-1".into()),
            lifecycle: Some("task".into()),
            labels: vec!["reader".into()],
        },
        mandate: Mandate {
            subject: "app-bench".into(),
            session_id: "sid-1".into(),
            scopes: vec!["read".into()],
            delegation_edge_id: Some("edge-1".into()),
            hop_count: 1,
            token_id: "jti-1".into(),
            issued_at: 1_767_261_590,
            expires_at: 1_767_261_900,
        },
        resource: Resource {
            id: "res-echo".into(),
            identifier: "resource://echo".into(),
            upstream_url: "http://127.0.0.1:9000/".into(),
            scopes: vec!["read".into()],
            auth_mode: "api_key".into(),
        },
        config: config.into(),
    }
}

fn compile(host: &PluginHost, world: World, path: &str) -> CompiledPlugin {
    host.compile(world, &tests_fixtures::read(path).unwrap())
        .unwrap()
}

fn plugins(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = PluginHost::start(HostConfig::default()).unwrap();
    eprintln!("pooling allocator: {}", host.pooling());
    let limits = CallLimits {
        deadline: Duration::from_millis(5),
        memory_bytes: 16 * 1024 * 1024,
    };
    let mut credentials = CredentialSet::new();
    credentials.insert(HostCredential::new(
        "primary",
        CredentialKind::ApiKey,
        Zeroizing::new(b"bench-secret-0123456789".to_vec()),
    ));
    let credentials = Arc::new(credentials);
    let rules = InjectRules::default();

    let mut group = c.benchmark_group("plugin_call");
    group.measurement_time(Duration::from_secs(5));
    for (name, path, config) in [
        (
            "authorizer/fixture-allow",
            tests_fixtures::FIXTURE_ALLOW,
            "{}",
        ),
        (
            "authorizer/example-request-rules",
            tests_fixtures::EXAMPLE_REQUEST_RULES,
            r#"{"methods":["GET","POST"],"path_prefixes":["/items"],"hours_utc":{"from":6,"to":22}}"#,
        ),
    ] {
        let plugin = compile(&host, World::Authorizer, path);
        let call = call(config);
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| async { host.authorize(&plugin, &call, limits).await.unwrap() });
        });
    }
    for (name, path, config) in [
        (
            "injector/fixture-echo-injector",
            tests_fixtures::FIXTURE_ECHO_INJECTOR,
            "{}",
        ),
        (
            "injector/example-request-signing",
            tests_fixtures::EXAMPLE_REQUEST_SIGNING,
            r#"{"key_id":"k1"}"#,
        ),
        (
            "injector/example-header-mapping",
            tests_fixtures::EXAMPLE_HEADER_MAPPING,
            r#"{"credential_header":"x-api-token","scheme":"Token","set":{"x-static":"v"}}"#,
        ),
    ] {
        let plugin = compile(&host, World::CredentialInjector, path);
        let call = call(config);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                host.inject(&plugin, &call, Arc::clone(&credentials), &rules, limits)
                    .await
                    .unwrap()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, plugins);
criterion_main!(benches);
