//! Seed data: one row (two for the agent tree) in every zone-scoped table for a zone,
//! inserted as the admin user, which row-level security does not restrict.

use sqlx::PgConnection;

/// The two zones the isolation tests use.
pub(crate) const ZONE_A: &str = "zone-a";
pub(crate) const ZONE_B: &str = "zone-b";

const SEED: &str = r#"
SET search_path = caracal;
INSERT INTO zones (id, name, slug) VALUES ('{z}', '{z}', '{z}');
INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id, version, status)
  VALUES ('{z}-secret', '{z}', '{z}-prov', 'provider_secret_config', 'password',
          decode(repeat('ab', 32), 'hex'), decode(repeat('00', 12), 'hex'), 'kek:0000000000000000', 1, 'active');
INSERT INTO providers (id, zone_id, name, identifier, provider_kind, secret_id)
  VALUES ('{z}-prov', '{z}', 'p', 'provider://p', 'api_key', '{z}-secret');
INSERT INTO applications (id, zone_id, name) VALUES ('{z}-app', '{z}', 'app');
INSERT INTO resources (id, zone_id, name, identifier, credential_provider_id, scopes)
  VALUES ('{z}-res', '{z}', 'r', 'resource://r', '{z}-prov', ARRAY['read']);
INSERT INTO application_dependencies (zone_id, application_id, resource_id) VALUES ('{z}', '{z}-app', '{z}-res');
INSERT INTO sessions (id, zone_id, session_type, subject_id, application_id, root_id, expires_at)
  VALUES ('{z}-sess', '{z}', 'application', 'sub', '{z}-app', '{z}-sess', now() + interval '1 hour');
INSERT INTO delegated_grants (id, zone_id, user_id, resource_id) VALUES ('{z}-dg', '{z}', 'user', '{z}-res');
INSERT INTO provider_grants (id, zone_id, provider_id, subject_id, access_token_ct)
  VALUES ('{z}-pg', '{z}', '{z}-prov', 'sub', '\x01');
INSERT INTO step_up_challenges (id, zone_id, principal_id, resource_set_hash, expires_at)
  VALUES ('{z}-step', '{z}', 'p', decode(repeat('00', 32), 'hex'), now() + interval '5 minutes');
INSERT INTO subject_issuers (id, zone_id, issuer, jwks_url) VALUES ('{z}-iss', '{z}', 'https://iss', 'https://iss/jwks');
INSERT INTO workloads (id, zone_id, name, secret_hash) VALUES ('{z}-wl', '{z}', 'wl', '$argon2id$x');
INSERT INTO policies (id, zone_id, name) VALUES ('{z}-pol', '{z}', 'pol');
INSERT INTO policy_versions (id, zone_id, policy_id, version, content, content_sha256, schema_version)
  VALUES ('{z}-pv', '{z}', '{z}-pol', 1, 'package x', repeat('a', 64), '1');
INSERT INTO policy_sets (id, zone_id, name) VALUES ('{z}-ps', '{z}', 'ps');
INSERT INTO policy_set_versions (id, zone_id, policy_set_id, version, manifest_json, manifest_sha256, schema_version)
  VALUES ('{z}-psv', '{z}', '{z}-ps', 1, '[{"policy_version_id": "{z}-pv"}]', repeat('b', 64), '1');
INSERT INTO policy_set_bindings (zone_id, policy_set_id, active_version_id) VALUES ('{z}', '{z}-ps', '{z}-psv');
INSERT INTO agent_sessions (id, zone_id, application_id, lifecycle, ttl_seconds) VALUES ('{z}-ag1', '{z}', '{z}-app', 'task', 60);
INSERT INTO agent_sessions (id, zone_id, application_id, parent_id, lifecycle, ttl_seconds, depth)
  VALUES ('{z}-ag2', '{z}', '{z}-app', '{z}-ag1', 'task', 60, 1);
INSERT INTO agent_topology (zone_id, parent_id, child_id) VALUES ('{z}', '{z}-ag1', '{z}-ag2');
INSERT INTO agent_sessions (id, zone_id, application_id, lifecycle, ttl_seconds) VALUES ('{z}-ag3', '{z}', '{z}-app', 'task', 60);
UPDATE agent_sessions SET status = 'terminated', terminated_at = now() WHERE id = '{z}-ag3';
INSERT INTO delegation_edges (id, zone_id, source_session_id, target_session_id, issuer_application_id,
                              receiver_application_id, expires_at)
  VALUES ('{z}-edge', '{z}', '{z}-ag1', '{z}-ag2', '{z}-app', '{z}-app', now() + interval '1 hour');
INSERT INTO delegation_graph_epochs (zone_id, epoch) VALUES ('{z}', 1);
INSERT INTO agent_services (id, zone_id, application_id, endpoint_url) VALUES ('{z}-svc', '{z}', '{z}-app', 'http://svc');
INSERT INTO agent_invocations (id, zone_id, service_id, idempotency_key, method) VALUES ('{z}-inv', '{z}', '{z}-svc', 'k', 'm');
INSERT INTO idempotency_receipts (id, zone_id, operation, scope_id, key_digest, request_digest, resource_type,
                                  resource_id, response_status, response_json, expires_at)
  VALUES ('{z}-idem', '{z}', 'session.start', '{z}-app', decode(repeat('01', 32), 'hex'), decode(repeat('02', 32), 'hex'),
          'session', 'x', 200, '{}', now() + interval '1 day');
INSERT INTO resource_rate_limits (zone_id, resource_id, window_seconds, max_requests) VALUES ('{z}', '{z}-res', 60, 100);
INSERT INTO gateway_resource_bindings (zone_id, resource_identifier, resource_id) VALUES ('{z}', 'resource://r', '{z}-res');
INSERT INTO gateway_plugins (id, zone_id, name, world, component_sha256, component)
  VALUES ('{z}-plug', '{z}', 'plug', 'authorizer', sha256('{z}'::bytea), '\x00');
INSERT INTO resource_plugin_bindings (id, zone_id, resource_id, plugin_id, hook, position)
  VALUES ('{z}-rpb', '{z}', '{z}-res', '{z}-plug', 'authorizer', 0);
INSERT INTO admin_tokens (id, zone_id, name, token_sha256, token_hash, scope, capability)
  VALUES ('{z}-tok', '{z}', 't', sha256('tok{z}'::bytea), '$argon2id$x', 'zone', 'read');
INSERT INTO invitations (id, zone_id, email, role, code_sha256, expires_at)
  VALUES ('{z}-invite', '{z}', 'a@b.c', 'admin', sha256('inv{z}'::bytea), now() + interval '1 day');
INSERT INTO teams (id, zone_id, name) VALUES ('{z}-team', '{z}', 'team');
INSERT INTO notification_sinks (id, zone_id, name, url, event_types)
  VALUES ('{z}-sink', '{z}', 's', 'https://hook', ARRAY['approval.requested']);
INSERT INTO notification_deliveries (id, zone_id, sink_id, event_id, event_type, payload_json)
  VALUES ('{z}-del', '{z}', '{z}-sink', 'ev', 'approval.requested', '{}');
INSERT INTO audit_events (id, zone_id, event_type, occurred_at, content_sha256, chain_seq)
  VALUES ('{z}-ev', '{z}', 'token_exchange', now(), decode(repeat('04', 32), 'hex'), 1);
INSERT INTO admin_audit_events (id, zone_id, actor_id, action, method, path, status_code, occurred_at, content_sha256, chain_seq)
  VALUES ('{z}-aev', '{z}', 'admin:x', 'POST /x', 'POST', '/x', 200, now(), decode(repeat('05', 32), 'hex'), 1);
"#;

/// Seeds one zone.
pub(crate) async fn seed_zone(admin: &mut PgConnection, zone: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(&SEED.replace("{z}", zone))
        .execute(admin)
        .await?;
    Ok(())
}

/// The SQLSTATE of an error, or "" when it is not a database error.
pub(crate) fn sqlstate(err: &sqlx::Error) -> String {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}
