-- 0007 gateway routing, plugins and limits (§1.6), admin tokens, the seed's invitation and
-- team tables, and approval notification sinks.

-- Per-resource gateway rate limit.
CREATE TABLE resource_rate_limits (
  zone_id        text NOT NULL REFERENCES zones (id),
  resource_id    text NOT NULL,
  window_seconds integer NOT NULL CHECK (window_seconds BETWEEN 1 AND 86400),
  max_requests   bigint NOT NULL CHECK (max_requests > 0),
  key_by         text NOT NULL DEFAULT 'application' CHECK (key_by IN ('application', 'resource')),
  created_at     timestamptz NOT NULL DEFAULT now(),
  created_by     text,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  updated_by     text,
  PRIMARY KEY (zone_id, resource_id),
  FOREIGN KEY (zone_id, resource_id) REFERENCES resources (zone_id, id) ON DELETE CASCADE
);
CALL caracal_enable_zone_rls('resource_rate_limits', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON resource_rate_limits TO caracal_api;
GRANT SELECT ON resource_rate_limits TO caracal_sts, caracal_gateway;

-- Which resources the gateway routes; a resource without a row is unroutable.
CREATE TABLE gateway_resource_bindings (
  zone_id             text NOT NULL REFERENCES zones (id),
  resource_identifier text NOT NULL CHECK (char_length(resource_identifier) BETWEEN 1 AND 512),
  resource_id         text NOT NULL,
  application_id      text NULL,
  enabled             boolean NOT NULL DEFAULT true,
  created_at          timestamptz NOT NULL DEFAULT now(),
  created_by          text,
  updated_at          timestamptz NOT NULL DEFAULT now(),
  updated_by          text,
  PRIMARY KEY (zone_id, resource_identifier),
  UNIQUE (zone_id, resource_id),
  FOREIGN KEY (zone_id, resource_id) REFERENCES resources (zone_id, id) ON DELETE CASCADE,
  FOREIGN KEY (zone_id, application_id) REFERENCES applications (zone_id, id)
);
CALL caracal_enable_zone_rls('gateway_resource_bindings', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON gateway_resource_bindings TO caracal_api;
GRANT SELECT ON gateway_resource_bindings TO caracal_sts, caracal_gateway;

-- WebAssembly components, content-addressed; the component bytes never change.
CREATE TABLE gateway_plugins (
  id               text PRIMARY KEY,
  zone_id          text NOT NULL REFERENCES zones (id),
  name             text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
  world            text NOT NULL CHECK (world IN ('authorizer', 'credential-injector')),
  wit_package      text NOT NULL DEFAULT 'caracal:gateway@0.1.0',
  component_sha256 bytea NOT NULL CHECK (octet_length(component_sha256) = 32),
  component        bytea NOT NULL CHECK (octet_length(component) BETWEEN 1 AND 33554432),
  description      text CHECK (char_length(description) <= 4096),
  archived_at      timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  created_by       text,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  updated_by       text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, component_sha256)
);
CREATE UNIQUE INDEX gateway_plugins_name_live ON gateway_plugins (zone_id, name) WHERE archived_at IS NULL;
CALL caracal_enable_zone_rls('gateway_plugins', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE ON gateway_plugins TO caracal_api;
GRANT SELECT ON gateway_plugins TO caracal_gateway;

CREATE FUNCTION caracal_plugin_content_immutable() RETURNS trigger
LANGUAGE plpgsql
SET search_path = caracal, pg_catalog
AS $$
BEGIN
  IF NEW.component IS DISTINCT FROM OLD.component
     OR NEW.component_sha256 IS DISTINCT FROM OLD.component_sha256 THEN
    RAISE EXCEPTION 'gateway_plugins component bytes are immutable; register a new plugin version'
      USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION caracal_plugin_content_immutable() FROM PUBLIC;
CREATE TRIGGER gateway_plugins_content_immutable BEFORE UPDATE ON gateway_plugins
  FOR EACH ROW EXECUTE FUNCTION caracal_plugin_content_immutable();

-- Ordered plugin hooks per resource.
CREATE TABLE resource_plugin_bindings (
  id                 text PRIMARY KEY,
  zone_id            text NOT NULL REFERENCES zones (id),
  resource_id        text NOT NULL,
  plugin_id          text NOT NULL,
  hook               text NOT NULL CHECK (hook IN ('authorizer', 'injector')),
  position           smallint NOT NULL CHECK (position >= 0),
  mode               text NULL CHECK (mode IN ('replace', 'augment')),
  config_json        jsonb NOT NULL DEFAULT '{}' CHECK (octet_length(config_json::text) <= 65536),
  deadline_ms        integer NOT NULL DEFAULT 5 CHECK (deadline_ms BETWEEN 1 AND 1000),
  memory_limit_bytes bigint NOT NULL DEFAULT 16777216
                     CHECK (memory_limit_bytes BETWEEN 65536 AND 1073741824),
  enabled            boolean NOT NULL DEFAULT true,
  created_at         timestamptz NOT NULL DEFAULT now(),
  created_by         text,
  updated_at         timestamptz NOT NULL DEFAULT now(),
  updated_by         text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, resource_id, hook, position),
  FOREIGN KEY (zone_id, resource_id) REFERENCES resources (zone_id, id) ON DELETE CASCADE,
  FOREIGN KEY (zone_id, plugin_id) REFERENCES gateway_plugins (zone_id, id),
  CHECK ((hook = 'injector') = (mode IS NOT NULL))
);
CREATE UNIQUE INDEX resource_plugin_bindings_one_replace ON resource_plugin_bindings (zone_id, resource_id)
  WHERE hook = 'injector' AND mode = 'replace';
CALL caracal_enable_zone_rls('resource_plugin_bindings', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON resource_plugin_bindings TO caracal_api;
GRANT SELECT ON resource_plugin_bindings TO caracal_gateway;

CREATE TRIGGER resource_rate_limits_binding_revision AFTER INSERT OR UPDATE OR DELETE ON resource_rate_limits
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();
CREATE TRIGGER gateway_resource_bindings_binding_revision AFTER INSERT OR UPDATE OR DELETE ON gateway_resource_bindings
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();
CREATE TRIGGER gateway_plugins_binding_revision AFTER INSERT OR UPDATE OR DELETE ON gateway_plugins
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();
CREATE TRIGGER resource_plugin_bindings_binding_revision AFTER INSERT OR UPDATE OR DELETE ON resource_plugin_bindings
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();

-- Admin API tokens: SHA-256 for lookup and Argon2id PHC, both must match (§10.5). Global
-- tokens have no zone; the API reaches them through the global_rows policy (§3.3).
CREATE TABLE admin_tokens (
  id           text PRIMARY KEY,
  zone_id      text NULL REFERENCES zones (id),
  name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  token_sha256 bytea NOT NULL CHECK (octet_length(token_sha256) = 32),
  token_hash   text NOT NULL,
  scope        text NOT NULL CHECK (scope IN ('global', 'zone')),
  capability   text NOT NULL CHECK (capability IN ('read', 'write', 'approve')),
  expires_at   timestamptz,
  last_used_at timestamptz,
  revoked_at   timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now(),
  created_by   text,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  updated_by   text,
  UNIQUE (zone_id, id),
  CHECK ((scope = 'global') = (zone_id IS NULL))
);
CREATE UNIQUE INDEX admin_tokens_live_sha256 ON admin_tokens (token_sha256) WHERE revoked_at IS NULL;
CALL caracal_enable_zone_rls('admin_tokens', ARRAY['caracal_api']::name[]);
CREATE POLICY global_rows ON admin_tokens FOR ALL TO caracal_api
  USING (zone_id IS NULL AND current_setting('caracal.zone_id', true) = '*')
  WITH CHECK (zone_id IS NULL AND current_setting('caracal.zone_id', true) = '*');
GRANT SELECT, INSERT, UPDATE, DELETE ON admin_tokens TO caracal_api;

-- Seed tables not used by the 1.0 clients.
CREATE TABLE invitations (
  id          text PRIMARY KEY,
  zone_id     text NOT NULL REFERENCES zones (id),
  email       text NOT NULL CHECK (email = lower(email) AND char_length(email) BETWEEN 3 AND 320),
  role        text NOT NULL,
  invited_by  text,
  code_sha256 bytea NOT NULL CHECK (octet_length(code_sha256) = 32),
  accepted_at timestamptz,
  expires_at  timestamptz NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  created_by  text,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  updated_by  text,
  UNIQUE (zone_id, id),
  UNIQUE (code_sha256)
);
CREATE INDEX invitations_email_idx ON invitations (zone_id, email);
CALL caracal_enable_zone_rls('invitations', ARRAY[]::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON invitations TO caracal_api;

CREATE TABLE teams (
  id           text PRIMARY KEY,
  zone_id      text NOT NULL REFERENCES zones (id),
  name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  members_json jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(members_json) = 'array'),
  created_at   timestamptz NOT NULL DEFAULT now(),
  created_by   text,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  updated_by   text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, name)
);
CALL caracal_enable_zone_rls('teams', ARRAY[]::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON teams TO caracal_api;

-- Approval webhooks and their delivery attempts (delivered by the audit service).
CREATE TABLE notification_sinks (
  id                   text PRIMARY KEY,
  zone_id              text NOT NULL REFERENCES zones (id),
  name                 text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  url                  text NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
  secret_ct            bytea NULL,
  event_types          text[] NOT NULL CHECK (cardinality(event_types) >= 1),
  active               boolean NOT NULL DEFAULT true,
  cursor_chain_seq     bigint NOT NULL DEFAULT 0 CHECK (cursor_chain_seq >= 0),
  consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
  last_success_at      timestamptz,
  last_failure_at      timestamptz,
  last_error           text,
  created_at           timestamptz NOT NULL DEFAULT now(),
  created_by           text,
  updated_at           timestamptz NOT NULL DEFAULT now(),
  updated_by           text,
  UNIQUE (zone_id, id)
);
CALL caracal_enable_zone_rls('notification_sinks', ARRAY['caracal_audit']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON notification_sinks TO caracal_api;
GRANT SELECT, UPDATE ON notification_sinks TO caracal_audit;

CREATE TABLE notification_deliveries (
  id              text PRIMARY KEY,
  zone_id         text NOT NULL REFERENCES zones (id),
  sink_id         text NOT NULL,
  event_id        text NOT NULL,
  event_type      text NOT NULL,
  payload_json    jsonb NOT NULL CHECK (octet_length(payload_json::text) <= 262144),
  attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  available_at    timestamptz NOT NULL DEFAULT now(),
  delivered_at    timestamptz,
  abandoned_at    timestamptz,
  response_status integer,
  last_error      text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, sink_id, event_id),
  FOREIGN KEY (zone_id, sink_id) REFERENCES notification_sinks (zone_id, id) ON DELETE CASCADE
);
CREATE INDEX notification_deliveries_due_idx ON notification_deliveries (available_at)
  WHERE delivered_at IS NULL AND abandoned_at IS NULL;
CALL caracal_enable_zone_rls('notification_deliveries', ARRAY['caracal_audit']::name[]);
GRANT SELECT ON notification_deliveries TO caracal_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON notification_deliveries TO caracal_audit;
