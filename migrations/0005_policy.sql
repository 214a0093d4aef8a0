-- 0005 policy (§1.4): named policies and sets, their immutable versions, and the one
-- active binding per zone.

CREATE TABLE policies (
  id          text PRIMARY KEY,
  zone_id     text NOT NULL REFERENCES zones (id),
  name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  description text CHECK (char_length(description) <= 4096),
  archived_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  created_by  text,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  updated_by  text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, name)
);
CALL caracal_enable_zone_rls('policies', ARRAY['caracal_sts', 'caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON policies TO caracal_api;
GRANT SELECT ON policies TO caracal_sts, caracal_gateway;

-- Immutable Rego snapshots. `content_sha256` is client-visible, hence lowercase hex text.
CREATE TABLE policy_versions (
  id             text PRIMARY KEY,
  zone_id        text NOT NULL REFERENCES zones (id),
  policy_id      text NOT NULL,
  version        integer NOT NULL CHECK (version >= 1),
  content        text NOT NULL CHECK (char_length(content) <= 262144),
  content_sha256 text NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
  schema_version text NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  created_by     text,
  UNIQUE (zone_id, id),
  UNIQUE (policy_id, version),
  FOREIGN KEY (zone_id, policy_id) REFERENCES policies (zone_id, id)
);
CREATE INDEX policy_versions_latest_idx ON policy_versions (zone_id, policy_id, version DESC);
CALL caracal_enable_zone_rls('policy_versions', ARRAY['caracal_sts', 'caracal_gateway']::name[]);
GRANT SELECT, INSERT ON policy_versions TO caracal_api;
GRANT SELECT ON policy_versions TO caracal_sts, caracal_gateway;

CREATE TRIGGER policy_versions_immutable BEFORE UPDATE OR DELETE ON policy_versions
  FOR EACH ROW EXECUTE FUNCTION caracal_reject_change('policy_versions rows are immutable');
CREATE TRIGGER policy_versions_immutable_truncate BEFORE TRUNCATE ON policy_versions
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_reject_change('policy_versions rows are immutable');

CREATE TABLE policy_sets (
  id          text PRIMARY KEY,
  zone_id     text NOT NULL REFERENCES zones (id),
  name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  description text CHECK (char_length(description) <= 4096),
  archived_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  created_by  text,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  updated_by  text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, name)
);
CALL caracal_enable_zone_rls('policy_sets', ARRAY['caracal_sts', 'caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON policy_sets TO caracal_api;
GRANT SELECT ON policy_sets TO caracal_sts, caracal_gateway;

-- Immutable manifests: an array of 1..256 {policy_version_id}. Upstream has no trigger here.
CREATE TABLE policy_set_versions (
  id              text PRIMARY KEY,
  zone_id         text NOT NULL REFERENCES zones (id),
  policy_set_id   text NOT NULL,
  version         integer NOT NULL CHECK (version >= 1),
  manifest_json   jsonb NOT NULL CHECK (jsonb_typeof(manifest_json) = 'array'
                                        AND jsonb_array_length(manifest_json) BETWEEN 1 AND 256),
  manifest_sha256 text NOT NULL CHECK (manifest_sha256 ~ '^[0-9a-f]{64}$'),
  schema_version  text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  created_by      text,
  UNIQUE (zone_id, id),
  -- lets a binding name a version of its own set only
  UNIQUE (zone_id, policy_set_id, id),
  UNIQUE (policy_set_id, version),
  FOREIGN KEY (zone_id, policy_set_id) REFERENCES policy_sets (zone_id, id)
);
CALL caracal_enable_zone_rls('policy_set_versions', ARRAY['caracal_sts', 'caracal_gateway']::name[]);
GRANT SELECT, INSERT ON policy_set_versions TO caracal_api;
GRANT SELECT ON policy_set_versions TO caracal_sts, caracal_gateway;

CREATE TRIGGER policy_set_versions_immutable BEFORE UPDATE OR DELETE ON policy_set_versions
  FOR EACH ROW EXECUTE FUNCTION caracal_reject_change('policy_set_versions rows are immutable');
CREATE TRIGGER policy_set_versions_immutable_truncate BEFORE TRUNCATE ON policy_set_versions
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_reject_change('policy_set_versions rows are immutable');

-- The active (and stored-only shadow) version per zone; at most one active binding per zone.
CREATE TABLE policy_set_bindings (
  zone_id           text NOT NULL REFERENCES zones (id),
  policy_set_id     text NOT NULL,
  active_version_id text NULL,
  shadow_version_id text NULL,
  created_at        timestamptz NOT NULL DEFAULT now(),
  created_by        text,
  updated_at        timestamptz NOT NULL DEFAULT now(),
  updated_by        text,
  PRIMARY KEY (zone_id, policy_set_id),
  FOREIGN KEY (zone_id, policy_set_id) REFERENCES policy_sets (zone_id, id),
  FOREIGN KEY (zone_id, policy_set_id, active_version_id)
    REFERENCES policy_set_versions (zone_id, policy_set_id, id),
  FOREIGN KEY (zone_id, policy_set_id, shadow_version_id)
    REFERENCES policy_set_versions (zone_id, policy_set_id, id)
);
CREATE UNIQUE INDEX policy_set_bindings_one_active ON policy_set_bindings (zone_id)
  WHERE active_version_id IS NOT NULL;
CALL caracal_enable_zone_rls('policy_set_bindings', ARRAY['caracal_sts', 'caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON policy_set_bindings TO caracal_api;
GRANT SELECT ON policy_set_bindings TO caracal_sts, caracal_gateway;
