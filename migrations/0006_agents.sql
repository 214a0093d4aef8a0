-- 0006 agents (§1.5): governed executions, their tree, delegation edges and the per-zone
-- graph epoch, the service registry, durable invocations and idempotency receipts.

CREATE TABLE agent_sessions (
  id                          text PRIMARY KEY,
  zone_id                     text NOT NULL REFERENCES zones (id),
  application_id              text NOT NULL,
  parent_id                   text NULL,
  subject_authority_record_id text NULL,
  lifecycle                   text NOT NULL CHECK (lifecycle IN ('task', 'service')),
  status                      text NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active', 'suspended', 'terminated', 'expired')),
  status_version              bigint NOT NULL DEFAULT 0 CHECK (status_version >= 0),
  termination_reason          text,
  depth                       integer NOT NULL DEFAULT 0 CHECK (depth BETWEEN 0 AND 10),
  labels                      text[] NOT NULL DEFAULT '{}' CHECK (cardinality(labels) <= 32),
  max_children                integer NOT NULL DEFAULT 10 CHECK (max_children >= 0),
  child_count                 integer NOT NULL DEFAULT 0 CHECK (child_count >= 0),
  ttl_seconds                 integer NULL CHECK (ttl_seconds BETWEEN 1 AND 86400),
  started_at                  timestamptz NOT NULL DEFAULT now(),
  last_active_at              timestamptz,
  last_heartbeat_at           timestamptz,
  heartbeat_deadline_at       timestamptz,
  lease_generation            bigint NOT NULL DEFAULT 0 CHECK (lease_generation >= 0),
  terminated_at               timestamptz,
  metadata_json               jsonb NOT NULL DEFAULT '{}'
                              CHECK (octet_length(metadata_json::text) <= 65536),
  created_at                  timestamptz NOT NULL DEFAULT now(),
  created_by                  text,
  updated_at                  timestamptz NOT NULL DEFAULT now(),
  updated_by                  text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, application_id) REFERENCES applications (zone_id, id),
  FOREIGN KEY (zone_id, parent_id) REFERENCES agent_sessions (zone_id, id),
  FOREIGN KEY (zone_id, subject_authority_record_id) REFERENCES sessions (zone_id, id),
  -- a task lives for its TTL and never heartbeats; a service holds a heartbeat lease
  CONSTRAINT agent_sessions_lifecycle_fields CHECK (
    (lifecycle = 'task' AND ttl_seconds IS NOT NULL
       AND last_heartbeat_at IS NULL AND heartbeat_deadline_at IS NULL)
    OR (lifecycle = 'service' AND ttl_seconds IS NULL AND heartbeat_deadline_at IS NOT NULL)),
  CONSTRAINT agent_sessions_terminated_at CHECK (
    (terminated_at IS NOT NULL) = (status IN ('terminated', 'expired')))
);
CREATE INDEX agent_sessions_parent_idx ON agent_sessions (zone_id, parent_id, status);
CREATE INDEX agent_sessions_subject_idx ON agent_sessions (zone_id, subject_authority_record_id);
CREATE INDEX agent_sessions_application_idx ON agent_sessions (zone_id, application_id, status);
CREATE INDEX agent_sessions_lease_idx ON agent_sessions (heartbeat_deadline_at)
  WHERE lifecycle = 'service' AND status = 'active';
CREATE INDEX agent_sessions_updated_idx ON agent_sessions (updated_at);
CALL caracal_enable_zone_rls('agent_sessions', ARRAY['caracal_gateway', 'caracal_coordinator']::name[]);
GRANT SELECT, UPDATE ON agent_sessions TO caracal_api;
GRANT SELECT ON agent_sessions TO caracal_sts, caracal_gateway;
GRANT SELECT, INSERT, UPDATE, DELETE ON agent_sessions TO caracal_coordinator;

-- Parent -> child edges of the agent tree; a child has exactly one parent.
CREATE TABLE agent_topology (
  zone_id    text NOT NULL REFERENCES zones (id),
  parent_id  text NOT NULL,
  child_id   text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (zone_id, parent_id, child_id),
  UNIQUE (zone_id, child_id),
  FOREIGN KEY (zone_id, parent_id) REFERENCES agent_sessions (zone_id, id) ON DELETE CASCADE,
  FOREIGN KEY (zone_id, child_id) REFERENCES agent_sessions (zone_id, id) ON DELETE CASCADE,
  CHECK (parent_id <> child_id)
);
CALL caracal_enable_zone_rls('agent_topology', ARRAY['caracal_coordinator']::name[]);
GRANT SELECT ON agent_topology TO caracal_api;
GRANT SELECT, INSERT, DELETE ON agent_topology TO caracal_coordinator;

-- Directed authority transfers between agent sessions.
CREATE TABLE delegation_edges (
  id                      text PRIMARY KEY,
  zone_id                 text NOT NULL REFERENCES zones (id),
  source_session_id       text NOT NULL,
  target_session_id       text NOT NULL,
  issuer_application_id   text NOT NULL,
  receiver_application_id text NOT NULL,
  resource_id             text NULL,
  scopes                  text[] NOT NULL DEFAULT '{}',
  constraints_json        jsonb NOT NULL DEFAULT '{}'
                          CHECK (jsonb_typeof(constraints_json) = 'object'
                                 AND octet_length(constraints_json::text) <= 65536),
  status                  text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'expired')),
  expires_at              timestamptz NOT NULL,
  edge_version            integer NOT NULL DEFAULT 0 CHECK (edge_version >= 0),
  revoked_at              timestamptz,
  parent_edge_id          text NULL,
  created_at              timestamptz NOT NULL DEFAULT now(),
  created_by              text,
  updated_at              timestamptz NOT NULL DEFAULT now(),
  updated_by              text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, source_session_id) REFERENCES agent_sessions (zone_id, id),
  FOREIGN KEY (zone_id, target_session_id) REFERENCES agent_sessions (zone_id, id),
  FOREIGN KEY (zone_id, issuer_application_id) REFERENCES applications (zone_id, id),
  FOREIGN KEY (zone_id, receiver_application_id) REFERENCES applications (zone_id, id),
  FOREIGN KEY (zone_id, resource_id) REFERENCES resources (zone_id, id),
  FOREIGN KEY (zone_id, parent_edge_id) REFERENCES delegation_edges (zone_id, id)
    ON DELETE SET NULL (parent_edge_id),
  CHECK (source_session_id <> target_session_id),
  CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX delegation_edges_source_idx ON delegation_edges (zone_id, source_session_id, status);
CREATE INDEX delegation_edges_target_idx ON delegation_edges (zone_id, target_session_id, status);
CREATE INDEX delegation_edges_resource_idx ON delegation_edges (zone_id, resource_id, status)
  WHERE resource_id IS NOT NULL;
CREATE INDEX delegation_edges_parent_idx ON delegation_edges (zone_id, parent_edge_id);
CREATE INDEX delegation_edges_active_expiry_idx ON delegation_edges (expires_at) WHERE status = 'active';
CREATE INDEX delegation_edges_updated_idx ON delegation_edges (updated_at);
CALL caracal_enable_zone_rls('delegation_edges', ARRAY['caracal_gateway', 'caracal_coordinator']::name[]);
GRANT SELECT, UPDATE ON delegation_edges TO caracal_api;
GRANT SELECT ON delegation_edges TO caracal_sts, caracal_gateway;
GRANT SELECT, INSERT, UPDATE, DELETE ON delegation_edges TO caracal_coordinator;

-- Monotonic per-zone epoch, bumped on every edge state change (settled point 6) with
-- INSERT ... ON CONFLICT (zone_id) DO UPDATE SET epoch = epoch + 1 RETURNING epoch.
CREATE TABLE delegation_graph_epochs (
  zone_id    text PRIMARY KEY REFERENCES zones (id),
  epoch      bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CALL caracal_enable_zone_rls('delegation_graph_epochs', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE ON delegation_graph_epochs TO caracal_api, caracal_coordinator;
GRANT SELECT ON delegation_graph_epochs TO caracal_sts, caracal_gateway;

-- Agent service registry.
CREATE TABLE agent_services (
  id                text PRIMARY KEY,
  zone_id           text NOT NULL REFERENCES zones (id),
  application_id    text NOT NULL,
  endpoint_url      text NOT NULL CHECK (char_length(endpoint_url) BETWEEN 1 AND 2048),
  protocol_versions text[] NOT NULL DEFAULT '{}',
  framework_name    text,
  framework_version text,
  capabilities      text[] NOT NULL DEFAULT '{}',
  health            text NOT NULL DEFAULT 'starting'
                    CHECK (health IN ('starting', 'healthy', 'degraded', 'unhealthy')),
  metadata_json     jsonb NOT NULL DEFAULT '{}' CHECK (octet_length(metadata_json::text) <= 65536),
  last_heartbeat_at timestamptz,
  created_at        timestamptz NOT NULL DEFAULT now(),
  created_by        text,
  updated_at        timestamptz NOT NULL DEFAULT now(),
  updated_by        text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, application_id, endpoint_url),
  FOREIGN KEY (zone_id, application_id) REFERENCES applications (zone_id, id)
);
CREATE INDEX agent_services_health_idx ON agent_services (zone_id, health);
CREATE INDEX agent_services_heartbeat_idx ON agent_services (last_heartbeat_at)
  WHERE health IN ('healthy', 'degraded');
CALL caracal_enable_zone_rls('agent_services', ARRAY['caracal_coordinator']::name[]);
GRANT SELECT ON agent_services TO caracal_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON agent_services TO caracal_coordinator;

-- Durable invocations.
CREATE TABLE agent_invocations (
  id                  text PRIMARY KEY,
  zone_id             text NOT NULL REFERENCES zones (id),
  service_id          text NOT NULL,
  source_session_id   text NULL,
  target_session_id   text NULL,
  idempotency_key     text NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 256),
  method              text NOT NULL CHECK (char_length(method) BETWEEN 1 AND 256),
  params_json         jsonb NOT NULL DEFAULT '{}' CHECK (octet_length(params_json::text) <= 1048576),
  metadata_json       jsonb NOT NULL DEFAULT '{}' CHECK (octet_length(metadata_json::text) <= 65536),
  status              text NOT NULL DEFAULT 'pending' CHECK (status IN (
                        'pending', 'running', 'succeeded', 'failed', 'cancel_requested',
                        'canceled', 'timed_out', 'dead')),
  attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts        integer NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
  timeout_ms          integer NOT NULL DEFAULT 30000 CHECK (timeout_ms > 0),
  retry_policy_json   jsonb NOT NULL DEFAULT '{}',
  error_json          jsonb NULL,
  deadline_at         timestamptz,
  cancel_requested_at timestamptz,
  started_at          timestamptz,
  completed_at        timestamptz,
  created_at          timestamptz NOT NULL DEFAULT now(),
  created_by          text,
  updated_at          timestamptz NOT NULL DEFAULT now(),
  updated_by          text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, service_id, idempotency_key),
  FOREIGN KEY (zone_id, service_id) REFERENCES agent_services (zone_id, id),
  FOREIGN KEY (zone_id, source_session_id) REFERENCES agent_sessions (zone_id, id),
  FOREIGN KEY (zone_id, target_session_id) REFERENCES agent_sessions (zone_id, id)
    ON DELETE SET NULL (target_session_id)
);
CREATE INDEX agent_invocations_service_idx ON agent_invocations (zone_id, service_id, status, created_at DESC);
CREATE INDEX agent_invocations_deadline_idx ON agent_invocations (deadline_at) WHERE status = 'running';
CALL caracal_enable_zone_rls('agent_invocations', ARRAY['caracal_coordinator']::name[]);
GRANT SELECT ON agent_invocations TO caracal_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON agent_invocations TO caracal_coordinator;

-- Coordinator idempotency receipts (`idempotency-key`).
CREATE TABLE idempotency_receipts (
  id              text PRIMARY KEY,
  zone_id         text NOT NULL REFERENCES zones (id),
  operation       text NOT NULL CHECK (operation IN ('session.start', 'delegation.create', 'invocation.create')),
  scope_id        text NOT NULL,
  key_digest      bytea NOT NULL CHECK (octet_length(key_digest) = 32),
  request_digest  bytea NOT NULL CHECK (octet_length(request_digest) = 32),
  resource_type   text NOT NULL,
  resource_id     text NOT NULL,
  response_status smallint NOT NULL CHECK (response_status BETWEEN 200 AND 299),
  response_json   jsonb NOT NULL CHECK (octet_length(response_json::text) <= 65536),
  expires_at      timestamptz NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, operation, scope_id, key_digest),
  CHECK (expires_at > created_at)
);
CREATE INDEX idempotency_receipts_expiry_idx ON idempotency_receipts (expires_at);
CALL caracal_enable_zone_rls('idempotency_receipts', ARRAY['caracal_coordinator']::name[]);
GRANT SELECT, INSERT, DELETE ON idempotency_receipts TO caracal_coordinator;
