-- 0003 product model (§1.2) and sealed key material (§1.6 `secrets`).
--
-- Zone-scoped tables carry UNIQUE (zone_id, id) and reference each other through composite
-- keys, so no row can point into another zone.

-- Sealed key material: zone signing keys and provider secret documents (§10).
CREATE TABLE secrets (
  id           text PRIMARY KEY,
  zone_id      text NOT NULL REFERENCES zones (id),
  entity_id    text NOT NULL,
  name         text NOT NULL CHECK (name IN ('zone_signing_key', 'provider_secret_config')),
  type         text NOT NULL CHECK (type IN ('token', 'password')),
  ciphertext   bytea NOT NULL CHECK (octet_length(ciphertext) >= 16),
  nonce        bytea NOT NULL CHECK (octet_length(nonce) = 12),
  dek_id       text NOT NULL CHECK (dek_id ~ '^kek:[0-9a-f]{16}$'),
  version      integer NOT NULL CHECK (version >= 1),
  status       text NOT NULL CHECK (status IN ('pending', 'active', 'retiring', 'retired')),
  activates_at timestamptz NOT NULL DEFAULT now(),
  rotated_at   timestamptz,
  public_jwk   jsonb NULL CHECK (public_jwk IS NULL OR jsonb_typeof(public_jwk) = 'object'),
  created_at   timestamptz NOT NULL DEFAULT now(),
  created_by   text,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  updated_by   text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, entity_id, name, version),
  CHECK (name <> 'zone_signing_key' OR public_jwk IS NOT NULL)
);
CREATE UNIQUE INDEX secrets_one_active ON secrets (zone_id, entity_id, name) WHERE status = 'active';
CREATE INDEX secrets_dek_id_idx ON secrets (dek_id);
CALL caracal_enable_zone_rls('secrets', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON secrets TO caracal_api;
GRANT SELECT, INSERT, UPDATE ON secrets TO caracal_sts;
GRANT SELECT ON secrets TO caracal_gateway;

-- Credential sources. Only the public part of the configuration is in clear; the secret
-- document is a sealed `secrets` row.
CREATE TABLE providers (
  id                     text PRIMARY KEY,
  zone_id                text NOT NULL REFERENCES zones (id),
  name                   text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  identifier             text NOT NULL CHECK (char_length(identifier) BETWEEN 1 AND 512),
  provider_kind          text NOT NULL CHECK (provider_kind IN (
                           'none', 'caracal_mandate', 'oauth2_authorization_code',
                           'oauth2_client_credentials', 'api_key', 'bearer_token', 'http_basic')),
  config_json            jsonb NOT NULL DEFAULT '{}'
                         CHECK (jsonb_typeof(config_json) = 'object'
                                AND octet_length(config_json::text) <= 65536),
  secret_config_keys     text[] NOT NULL DEFAULT '{}',
  secret_id              text NULL,
  connectivity_failed_at timestamptz,
  archived_at            timestamptz,
  created_at             timestamptz NOT NULL DEFAULT now(),
  created_by             text,
  updated_at             timestamptz NOT NULL DEFAULT now(),
  updated_by             text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, secret_id) REFERENCES secrets (zone_id, id)
);
CREATE UNIQUE INDEX providers_identifier_live ON providers (zone_id, identifier) WHERE archived_at IS NULL;
CALL caracal_enable_zone_rls('providers', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON providers TO caracal_api;
GRANT SELECT ON providers TO caracal_sts, caracal_gateway;

-- OAuth clients of the STS.
CREATE TABLE applications (
  id                  text PRIMARY KEY,
  zone_id             text NOT NULL REFERENCES zones (id),
  name                text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  registration_method text NOT NULL DEFAULT 'managed' CHECK (registration_method IN ('managed', 'dcr')),
  credential_type     text NOT NULL DEFAULT 'token' CHECK (credential_type = 'token'),
  client_secret_hash  text,
  traits              text[] NOT NULL DEFAULT '{}',
  expires_at          timestamptz,
  archived_at         timestamptz,
  last_active_at      timestamptz,
  created_at          timestamptz NOT NULL DEFAULT now(),
  created_by          text,
  updated_at          timestamptz NOT NULL DEFAULT now(),
  updated_by          text,
  UNIQUE (zone_id, id),
  CHECK (registration_method <> 'dcr' OR expires_at IS NOT NULL)
);
CREATE UNIQUE INDEX applications_name_live ON applications (zone_id, name) WHERE archived_at IS NULL;
CREATE INDEX applications_expiry_idx ON applications (zone_id, expires_at) WHERE expires_at IS NOT NULL;
CALL caracal_enable_zone_rls('applications', ARRAY['caracal_api', 'caracal_sts', 'caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON applications TO caracal_api;
GRANT SELECT ON applications TO caracal_sts, caracal_gateway, caracal_coordinator;

-- Protected upstreams. `operation_enforcement` defaults to `enforced`, as resources created
-- through the admin API do (settled point 2).
CREATE TABLE resources (
  id                     text PRIMARY KEY,
  zone_id                text NOT NULL REFERENCES zones (id),
  name                   text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  identifier             text NOT NULL CHECK (char_length(identifier) BETWEEN 1 AND 512),
  upstream_url           text NULL CHECK (char_length(upstream_url) <= 2048),
  credential_provider_id text NOT NULL,
  scopes                 text[] NOT NULL CHECK (cardinality(scopes) BETWEEN 1 AND 64),
  operations             jsonb NOT NULL DEFAULT '[]'
                         CHECK (jsonb_typeof(operations) = 'array'
                                AND octet_length(operations::text) <= 262144),
  operation_enforcement  text NOT NULL DEFAULT 'enforced'
                         CHECK (operation_enforcement IN ('enforced', 'transport_uniform')),
  archived_at            timestamptz,
  created_at             timestamptz NOT NULL DEFAULT now(),
  created_by             text,
  updated_at             timestamptz NOT NULL DEFAULT now(),
  updated_by             text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, credential_provider_id) REFERENCES providers (zone_id, id)
);
CREATE UNIQUE INDEX resources_identifier_live ON resources (zone_id, identifier) WHERE archived_at IS NULL;
CREATE INDEX resources_provider_idx ON resources (zone_id, credential_provider_id);
CALL caracal_enable_zone_rls('resources', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON resources TO caracal_api;
GRANT SELECT ON resources TO caracal_sts, caracal_gateway, caracal_coordinator;

-- Declared application -> resource dependencies (informational; no runtime effect).
CREATE TABLE application_dependencies (
  zone_id        text NOT NULL REFERENCES zones (id),
  application_id text NOT NULL,
  resource_id    text NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  created_by     text,
  PRIMARY KEY (zone_id, application_id, resource_id),
  FOREIGN KEY (zone_id, application_id) REFERENCES applications (zone_id, id) ON DELETE CASCADE,
  FOREIGN KEY (zone_id, resource_id) REFERENCES resources (zone_id, id) ON DELETE CASCADE
);
CALL caracal_enable_zone_rls('application_dependencies', ARRAY[]::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON application_dependencies TO caracal_api;
GRANT SELECT ON application_dependencies TO caracal_sts;

-- Everything above that the gateway snapshot holds bumps the binding revision (§5.5).
CREATE TRIGGER secrets_binding_revision AFTER INSERT OR UPDATE OR DELETE ON secrets
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();
CREATE TRIGGER providers_binding_revision AFTER INSERT OR UPDATE OR DELETE ON providers
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();
CREATE TRIGGER applications_binding_revision AFTER INSERT OR UPDATE OR DELETE ON applications
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();
CREATE TRIGGER resources_binding_revision AFTER INSERT OR UPDATE OR DELETE ON resources
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_bump_binding_revision();
