//! Counters for `/metrics` (Prometheus text) and `/metrics.json`: requests, answers by
//! status class, denials by cause, forwarded calls, revocations that cut a stream, key
//! reloads, plugin outcomes and failures by cause, the snapshot builder, the authority view's freshness, the stream consumers and
//! the audit emitter.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use control_events::audit::AuditHealth;
use gateway_plugin_host::FailureCause;
use gateway_state::StateHandle;

/// What one plugin call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PluginOutcome {
    /// An authorizer allowed.
    Allowed,
    /// An authorizer denied.
    Denied,
    /// An injector's operations were applied.
    Injected,
    /// The call failed closed.
    Failed(FailureCause),
}

/// Request and outcome counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: AtomicU64,
    forwarded: AtomicU64,
    status_2xx: AtomicU64,
    status_3xx: AtomicU64,
    status_4xx: AtomicU64,
    status_5xx: AtomicU64,
    stream_revoked: AtomicU64,
    key_reloads: AtomicU64,
    /// Denials by cause; the set of causes is small and fixed by the pipeline.
    denials: Mutex<BTreeMap<String, u64>>,
    /// Plugin calls by outcome: allow, deny, injected.
    plugin_allow: AtomicU64,
    plugin_deny: AtomicU64,
    plugin_injected: AtomicU64,
    /// Failed plugin calls, by [`FailureCause`] (index of `FailureCause::ALL`).
    plugin_failures: [AtomicU64; FailureCause::ALL.len()],
}

/// One exported value.
struct Value {
    name: String,
    help: &'static str,
    counter: bool,
    labels: Option<(&'static str, String)>,
    value: u64,
}

impl Metrics {
    pub(crate) fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_status(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.status_2xx,
            300..=399 => &self.status_3xx,
            400..=499 => &self.status_4xx,
            _ => &self.status_5xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_revoked(&self) {
        self.stream_revoked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn key_reload(&self) {
        self.key_reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// One plugin call's outcome.
    pub(crate) fn plugin(&self, outcome: PluginOutcome) {
        let counter = match outcome {
            PluginOutcome::Allowed => &self.plugin_allow,
            PluginOutcome::Denied => &self.plugin_deny,
            PluginOutcome::Injected => &self.plugin_injected,
            PluginOutcome::Failed(cause) => {
                let index = FailureCause::ALL
                    .iter()
                    .position(|c| *c == cause)
                    .unwrap_or(0);
                match self.plugin_failures.get(index) {
                    Some(counter) => counter,
                    None => return,
                }
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn denial(&self, cause: &str) {
        if let Ok(mut denials) = self.denials.lock() {
            *denials.entry(cause.to_owned()).or_insert(0) += 1;
        }
    }

    fn values(&self, state: &StateHandle, audit: &AuditHealth) -> Vec<Value> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let plain = |name: &str, help: &'static str, counter: bool, value: u64| Value {
            name: name.to_owned(),
            help,
            counter,
            labels: None,
            value,
        };
        let mut out = vec![
            plain(
                "caracal_gateway_requests_total",
                "requests received on the gateway port",
                true,
                load(&self.requests),
            ),
            plain(
                "caracal_gateway_forwarded_total",
                "requests an upstream answered",
                true,
                load(&self.forwarded),
            ),
            plain(
                "caracal_gateway_stream_revocations_total",
                "responses cut by a revocation while streaming",
                true,
                load(&self.stream_revoked),
            ),
            plain(
                "caracal_gateway_key_reloads_total",
                "snapshot rebuilds forced by an unknown kid",
                true,
                load(&self.key_reloads),
            ),
        ];
        for (class, counter) in [
            ("2xx", &self.status_2xx),
            ("3xx", &self.status_3xx),
            ("4xx", &self.status_4xx),
            ("5xx", &self.status_5xx),
        ] {
            out.push(Value {
                name: "caracal_gateway_responses_total".to_owned(),
                help: "answers by status class",
                counter: true,
                labels: Some(("class", class.to_owned())),
                value: load(counter),
            });
        }
        for (outcome, counter) in [
            ("allow", &self.plugin_allow),
            ("deny", &self.plugin_deny),
            ("injected", &self.plugin_injected),
        ] {
            out.push(Value {
                name: "caracal_gateway_plugin_calls_total".to_owned(),
                help: "plugin calls that completed, by outcome",
                counter: true,
                labels: Some(("outcome", outcome.to_owned())),
                value: load(counter),
            });
        }
        for (cause, counter) in FailureCause::ALL.iter().zip(self.plugin_failures.iter()) {
            out.push(Value {
                name: "caracal_gateway_plugin_failures_total".to_owned(),
                help: "plugin calls that failed closed, by cause",
                counter: true,
                labels: Some(("cause", cause.as_str().to_owned())),
                value: load(counter),
            });
        }
        if let Ok(denials) = self.denials.lock() {
            for (cause, value) in denials.iter() {
                out.push(Value {
                    name: "caracal_gateway_denials_total".to_owned(),
                    help: "requests refused, by cause",
                    counter: true,
                    labels: Some(("cause", cause.clone())),
                    value: *value,
                });
            }
        }
        let view = state.view();
        out.push(plain(
            "caracal_gateway_revocation_state_age_ms",
            "age of the authority view (newest of the last poll and the consumers' reads)",
            false,
            view.age_ms()
                .and_then(|a| u64::try_from(a).ok())
                .unwrap_or(u64::MAX),
        ));
        out.push(plain(
            "caracal_gateway_revocation_marks",
            "revoked anchors held",
            false,
            view.mark_count(),
        ));
        let snapshot = state.snapshot();
        out.push(plain(
            "caracal_gateway_snapshot_revision",
            "binding revision of the current snapshot",
            false,
            u64::try_from(snapshot.revision).unwrap_or(0),
        ));
        out.push(plain(
            "caracal_gateway_snapshot_resources",
            "resource bindings in the current snapshot",
            false,
            snapshot.binding_count() as u64,
        ));
        out.push(plain(
            "caracal_gateway_snapshot_builds_total",
            "successful snapshot builds",
            true,
            state.stats.ok.load(Ordering::Relaxed),
        ));
        out.push(plain(
            "caracal_gateway_snapshot_build_failures_total",
            "failed snapshot builds (the previous snapshot stayed)",
            true,
            state.stats.failed.load(Ordering::Relaxed),
        ));
        out.push(plain(
            "caracal_gateway_snapshot_build_duration_us",
            "duration of the last successful build",
            false,
            state.stats.last_build_us.load(Ordering::Relaxed),
        ));
        for ((stream, _), stats) in gateway_state::GATEWAY_STREAMS
            .iter()
            .zip(state.consumers.iter())
        {
            out.push(Value {
                name: "caracal_gateway_stream_messages_total".to_owned(),
                help: "stream messages handled",
                counter: true,
                labels: Some(("stream", (*stream).to_owned())),
                value: stats.handled.load(Ordering::Relaxed),
            });
            out.push(Value {
                name: "caracal_gateway_stream_bad_signatures_total".to_owned(),
                help: "stream messages dropped for a bad signature",
                counter: true,
                labels: Some(("stream", (*stream).to_owned())),
                value: stats.bad_signatures.load(Ordering::Relaxed),
            });
        }
        for (name, help, counter, value) in audit.metric_values("caracal_gateway_audit") {
            out.push(Value {
                name,
                help,
                counter,
                labels: None,
                value,
            });
        }
        out
    }

    /// The Prometheus text exposition.
    pub(crate) fn prometheus(&self, state: &StateHandle, audit: &AuditHealth) -> String {
        let mut out = String::new();
        let mut described = std::collections::HashSet::new();
        for v in self.values(state, audit) {
            if described.insert(v.name.clone()) {
                let kind = if v.counter { "counter" } else { "gauge" };
                out.push_str(&format!(
                    "# HELP {} {}\n# TYPE {} {kind}\n",
                    v.name, v.help, v.name
                ));
            }
            match &v.labels {
                Some((label, value)) => {
                    out.push_str(&format!(
                        "{}{{{label}=\"{}\"}} {}\n",
                        v.name,
                        escape(value),
                        v.value
                    ));
                }
                None => out.push_str(&format!("{} {}\n", v.name, v.value)),
            }
        }
        out
    }

    /// The same values as JSON (labelled values nested by label value).
    pub(crate) fn json(&self, state: &StateHandle, audit: &AuditHealth) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for v in self.values(state, audit) {
            match v.labels {
                Some((_, label)) => {
                    let entry = map
                        .entry(v.name)
                        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                    if let serde_json::Value::Object(inner) = entry {
                        inner.insert(label, v.value.into());
                    }
                }
                None => {
                    map.insert(v.name, v.value.into());
                }
            }
        }
        serde_json::Value::Object(map)
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
