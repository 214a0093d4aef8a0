//! Redis stream names, stream field names, consumer-group names and the other
//! Redis key patterns of `storage-and-events.md` §6.
//!
//! One constant per stream and one function per key pattern, so a name is
//! spelled in exactly one place.

// ---------------------------------------------------------------------------
// Streams (§6.1)
// ---------------------------------------------------------------------------

/// Session, agent-session and delegation-edge revocations.
pub const SESSIONS_REVOKE: &str = "caracal.sessions.revoke";
/// Delegation edge creation, revocation and expiry (graph epoch changes).
pub const DELEGATIONS_INVALIDATE: &str = "caracal.delegations.invalidate";
/// Agent session lifecycle: spawn, suspend, resume, terminate.
pub const AGENTS_LIFECYCLE: &str = "caracal.agents.lifecycle";
/// Policy set version activations.
pub const POLICY_INVALIDATE: &str = "caracal.policy.invalidate";
/// Zone signing key creation, rotation and retirement.
pub const KEYS_INVALIDATE: &str = "caracal.keys.invalidate";
/// Gateway resource binding revisions (written by the revision trigger).
pub const GATEWAY_BINDINGS_INVALIDATE: &str = "caracal.gateway.bindings.invalidate";
/// Invocation lifecycle events (Coordinator).
pub const INVOCATIONS_LIFECYCLE: &str = "caracal.invocations.lifecycle";
/// The audit work queue read by the ledger (`audit-ingestor`). No `_sig`;
/// each entry carries `id`, `data` and `sig`.
pub const AUDIT_EVENTS: &str = "caracal.audit.events";
/// Dead letters of the audit ledger.
pub const AUDIT_DLQ: &str = "caracal.audit.events.dlq";

/// Every fan-out stream (signed with `_sig`, read by per-replica groups).
pub const FANOUT_STREAMS: [&str; 7] = [
    SESSIONS_REVOKE,
    DELEGATIONS_INVALIDATE,
    AGENTS_LIFECYCLE,
    POLICY_INVALIDATE,
    KEYS_INVALIDATE,
    GATEWAY_BINDINGS_INVALIDATE,
    INVOCATIONS_LIFECYCLE,
];

/// The dead-letter stream of a fan-out stream: `<stream>.dead`.
#[must_use]
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}.dead")
}

// ---------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------

/// Audit stream field: the event id (equals `data.id`).
pub const AUDIT_FIELD_ID: &str = "id";
/// Audit stream field: the event JSON (`storage-and-events.md` §8.1).
pub const AUDIT_FIELD_DATA: &str = "data";
/// Audit stream field: lowercase hex HMAC-SHA256 over the exact `data` bytes
/// with `AUDIT_HMAC_KEY`, or empty in dev mode.
pub const AUDIT_FIELD_SIG: &str = "sig";
/// Envelope field added by the outbox dispatcher: the outbox row id.
pub const FIELD_OUTBOX_ID: &str = "outbox_id";
/// Envelope field added by the outbox dispatcher when the row has one.
pub const FIELD_DEDUPE_KEY: &str = "dedupe_key";
/// Envelope field: the stream signature (`§6.3`); re-exported from
/// `control-crypto` so both crates spell it the same way.
pub const FIELD_SIG: &str = control_crypto::SIG_FIELD;

// ---------------------------------------------------------------------------
// Consumer groups (§6.1, §6.2, §6.5)
// ---------------------------------------------------------------------------

/// The one shared group of the audit stream.
pub const AUDIT_INGESTOR_GROUP: &str = "audit-ingestor";

/// A per-replica group name: `<base>:<instance>`, e.g.
/// `sts-revocation:sts-0` (design decision 5).
#[must_use]
pub fn replica_group(base: &str, instance: &str) -> String {
    format!("{base}:{instance}")
}

/// A consumer name: `<service>-<instance>`.
#[must_use]
pub fn consumer_name(service: &str, instance: &str) -> String {
    format!("{service}-{instance}")
}

// ---------------------------------------------------------------------------
// Other Redis keys (§6.1, §6.2, §6.4, §6.6)
// ---------------------------------------------------------------------------

/// Gateway single-use marker of a mandate: `seen:jti:<jti>`.
#[must_use]
pub fn seen_jti_key(jti: &str) -> String {
    format!("seen:jti:{jti}")
}

/// STS issuance registry entry: `audit:jti:<jti>`.
#[must_use]
pub fn jti_registry_key(jti: &str) -> String {
    format!("audit:jti:{jti}")
}

/// STS gateway-exchange nonce: `caracal:sts:gw-nonce:<nonce>`.
#[must_use]
pub fn gateway_nonce_key(nonce: &str) -> String {
    format!("caracal:sts:gw-nonce:{nonce}")
}

/// STS mint limiter window: `rl:<zone>:<resource>:<app>`.
#[must_use]
pub fn mint_rate_limit_key(zone_id: &str, resource_id: &str, application_id: &str) -> String {
    format!("rl:{zone_id}:{resource_id}:{application_id}")
}

/// STS run-credential mint limiter: `rl:run-credential:<id>:mint`.
#[must_use]
pub fn run_credential_mint_key(run_credential_id: &str) -> String {
    format!("rl:run-credential:{run_credential_id}:mint")
}

/// STS authentication failure counter: `auth-rl:<sha>`.
#[must_use]
pub fn auth_rate_limit_key(sha: &str) -> String {
    format!("auth-rl:{sha}")
}

/// STS authentication block marker: `auth-rl:<sha>:blocked`.
#[must_use]
pub fn auth_blocked_key(sha: &str) -> String {
    format!("auth-rl:{sha}:blocked")
}

/// Gateway rate-limit bucket `i` of a resource:
/// `caracal:gw-rl:{<zone>:<resource>}:<app or *>:<i>` (the braces make the
/// zone and resource one Redis Cluster hash slot).
#[must_use]
pub fn gateway_rate_limit_key(
    zone_id: &str,
    resource_id: &str,
    application_id: Option<&str>,
    bucket: u64,
) -> String {
    let app = application_id.unwrap_or("*");
    format!("caracal:gw-rl:{{{zone_id}:{resource_id}}}:{app}:{bucket}")
}

/// Provider refresh failure counter: `provider-refresh-failures:<id>`.
#[must_use]
pub fn provider_refresh_failures_key(provider_id: &str) -> String {
    format!("provider-refresh-failures:{provider_id}")
}

/// Provider refresh circuit marker: `provider-refresh-circuit:<id>`.
#[must_use]
pub fn provider_refresh_circuit_key(provider_id: &str) -> String {
    format!("provider-refresh-circuit:{provider_id}")
}

/// Provider refresh lock: `provider-refresh:<sha>:lock`.
#[must_use]
pub fn provider_refresh_lock_key(sha: &str) -> String {
    format!("provider-refresh:{sha}:lock")
}

/// Handler failure counter of a fan-out entry:
/// `stream-failure:<stream>:<group>:<id>`.
#[must_use]
pub fn stream_failure_key(stream: &str, group: &str, entry_id: &str) -> String {
    format!("stream-failure:{stream}:{group}:{entry_id}")
}

/// Policy load status hash of a zone: `caracal:policy:status:<zone>`.
#[must_use]
pub fn policy_status_key(zone_id: &str) -> String {
    format!("caracal:policy:status:{zone_id}")
}

/// Field of [`policy_status_key`] written by one process:
/// `<service>/<instance>`.
#[must_use]
pub fn policy_status_field(service: &str, instance: &str) -> String {
    format!("{service}/{instance}")
}

/// Instance heartbeat sorted set of a service: `caracal:instances:<service>`
/// (member instance, score unix ms).
#[must_use]
pub fn instances_key(service: &str) -> String {
    format!("caracal:instances:{service}")
}

/// Group janitor lock of a stream: `caracal:janitor:<stream>`.
#[must_use]
pub fn janitor_lock_key(stream: &str) -> String {
    format!("caracal:janitor:{stream}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_match_the_spec_table() {
        assert_eq!(SESSIONS_REVOKE, "caracal.sessions.revoke");
        assert_eq!(
            GATEWAY_BINDINGS_INVALIDATE,
            "caracal.gateway.bindings.invalidate"
        );
        assert_eq!(AUDIT_EVENTS, "caracal.audit.events");
        assert_eq!(AUDIT_DLQ, "caracal.audit.events.dlq");
        assert_eq!(
            dead_letter_stream(SESSIONS_REVOKE),
            "caracal.sessions.revoke.dead"
        );
        assert_eq!(FIELD_SIG, "_sig");
    }

    #[test]
    fn key_patterns_match_the_spec_table() {
        assert_eq!(jti_registry_key("j1"), "audit:jti:j1");
        assert_eq!(seen_jti_key("j1"), "seen:jti:j1");
        assert_eq!(mint_rate_limit_key("z", "r", "a"), "rl:z:r:a");
        assert_eq!(auth_rate_limit_key("ab"), "auth-rl:ab");
        assert_eq!(auth_blocked_key("ab"), "auth-rl:ab:blocked");
        assert_eq!(
            gateway_rate_limit_key("z", "r", None, 3),
            "caracal:gw-rl:{z:r}:*:3"
        );
        assert_eq!(
            gateway_rate_limit_key("z", "r", Some("app"), 0),
            "caracal:gw-rl:{z:r}:app:0"
        );
        assert_eq!(instances_key("sts"), "caracal:instances:sts");
        assert_eq!(policy_status_key("z"), "caracal:policy:status:z");
        assert_eq!(policy_status_field("gateway", "gw-0"), "gateway/gw-0");
        assert_eq!(
            replica_group("sts-revocation", "sts-0"),
            "sts-revocation:sts-0"
        );
        assert_eq!(consumer_name("audit", "a-0"), "audit-a-0");
        assert_eq!(
            stream_failure_key(SESSIONS_REVOKE, "g", "1-0"),
            "stream-failure:caracal.sessions.revoke:g:1-0"
        );
    }
}
