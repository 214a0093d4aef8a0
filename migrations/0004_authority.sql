-- 0004 authority (§1.3): authority records, admin grants, brokered provider grants,
-- approvals, trusted federation issuers and `caracal run` workloads.

-- Authority records. One immutable row per successful mint; `id` is the JWT `sid` and the
-- revocation anchor (upstream 1.0 calls this table authority_records).
CREATE TABLE sessions (
  id               text PRIMARY KEY,
  zone_id          text NOT NULL REFERENCES zones (id),
  session_type     text NOT NULL CHECK (session_type IN ('user', 'application')),
  subject_id       text NOT NULL CHECK (octet_length(subject_id) BETWEEN 1 AND 512),
  application_id   text NULL,
  parent_id        text NULL,
  root_id          text NOT NULL,
  status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'expired')),
  expires_at       timestamptz NOT NULL,
  authenticated_at timestamptz,
  claims_json      jsonb NULL CHECK (claims_json IS NULL OR octet_length(claims_json::text) <= 65536),
  revoked_at       timestamptz,
  revoked_reason   text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  created_by       text,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  updated_by       text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, application_id) REFERENCES applications (zone_id, id),
  FOREIGN KEY (zone_id, parent_id) REFERENCES sessions (zone_id, id) ON DELETE SET NULL (parent_id),
  CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX sessions_subject_idx ON sessions (zone_id, subject_id, status);
CREATE INDEX sessions_parent_idx ON sessions (zone_id, parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX sessions_root_idx ON sessions (zone_id, root_id);
CREATE INDEX sessions_active_expiry_idx ON sessions (expires_at) WHERE status = 'active';
CREATE INDEX sessions_revoked_expiry_idx ON sessions (expires_at) WHERE status = 'revoked';
CALL caracal_enable_zone_rls('sessions', ARRAY['caracal_sts', 'caracal_gateway']::name[]);
GRANT SELECT, UPDATE ON sessions TO caracal_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON sessions TO caracal_sts;
-- The gateway sees the authority fields only, never the claim snapshot.
GRANT SELECT (id, zone_id, session_type, subject_id, application_id, parent_id, root_id,
              status, expires_at, revoked_at) ON sessions TO caracal_gateway;
GRANT SELECT ON sessions TO caracal_coordinator;

-- Admin subject grants (/v1/zones/{z}/grants).
CREATE TABLE delegated_grants (
  id             text PRIMARY KEY,
  zone_id        text NOT NULL REFERENCES zones (id),
  application_id text NULL,
  user_id        text NOT NULL CHECK (octet_length(user_id) BETWEEN 1 AND 512),
  resource_id    text NOT NULL,
  scopes         text[] NOT NULL DEFAULT '{}',
  status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'expired')),
  created_at     timestamptz NOT NULL DEFAULT now(),
  created_by     text,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  updated_by     text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, application_id) REFERENCES applications (zone_id, id),
  FOREIGN KEY (zone_id, resource_id) REFERENCES resources (zone_id, id)
);
CREATE INDEX delegated_grants_user_idx ON delegated_grants (zone_id, user_id, status);
CREATE INDEX delegated_grants_resource_idx ON delegated_grants (zone_id, resource_id);
CALL caracal_enable_zone_rls('delegated_grants', ARRAY[]::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON delegated_grants TO caracal_api;

-- Brokered OAuth accounts (wire `connection_id` = id). Tokens are sealed envelopes (§10.2).
CREATE TABLE provider_grants (
  id                    text PRIMARY KEY,
  zone_id               text NOT NULL REFERENCES zones (id),
  provider_id           text NOT NULL,
  subject_id            text NOT NULL CHECK (octet_length(subject_id) BETWEEN 1 AND 512),
  status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'expired')),
  access_token_ct       bytea NOT NULL,
  refresh_token_ct      bytea NULL,
  token_type            text,
  scopes                text[] NOT NULL DEFAULT '{}',
  expires_at            timestamptz,
  refreshed_at          timestamptz,
  refresh_token_version integer NOT NULL DEFAULT 0 CHECK (refresh_token_version >= 0),
  created_at            timestamptz NOT NULL DEFAULT now(),
  created_by            text,
  updated_at            timestamptz NOT NULL DEFAULT now(),
  updated_by            text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, provider_id) REFERENCES providers (zone_id, id)
);
CREATE UNIQUE INDEX provider_grants_one_active ON provider_grants (zone_id, provider_id, subject_id)
  WHERE status = 'active';
CALL caracal_enable_zone_rls('provider_grants', ARRAY['caracal_gateway']::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON provider_grants TO caracal_api;
GRANT SELECT, INSERT, UPDATE ON provider_grants TO caracal_sts;
GRANT SELECT ON provider_grants TO caracal_gateway;

-- Approvals: holds on one exact mint.
CREATE TABLE step_up_challenges (
  id                           text PRIMARY KEY,
  zone_id                      text NOT NULL REFERENCES zones (id),
  session_id                   text NOT NULL DEFAULT '',
  principal_id                 text NOT NULL CHECK (octet_length(principal_id) BETWEEN 1 AND 512),
  application_id               text NULL,
  challenge_type               text NOT NULL DEFAULT 'human_approval'
                               CHECK (challenge_type IN ('human_approval', 'mfa', 'software_attestation')),
  challenge_secret_hash        bytea NULL CHECK (octet_length(challenge_secret_hash) = 32),
  resource_set_hash            bytea NOT NULL CHECK (octet_length(resource_set_hash) = 32),
  tier                         text,
  approver_class               text NOT NULL DEFAULT 'operator'
                               CHECK (approver_class IN ('operator', 'subject', 'any')),
  privacy_mode                 text NOT NULL DEFAULT 'identified'
                               CHECK (privacy_mode IN ('identified', 'pseudonymous', 'anonymous')),
  subject_anchor               text NOT NULL DEFAULT '',
  metadata_json                jsonb NOT NULL DEFAULT '{}'
                               CHECK (octet_length(metadata_json::text) <= 65536),
  expires_at                   timestamptz NOT NULL,
  satisfied_at                 timestamptz,
  rejected_at                  timestamptz,
  decided_by                   text,
  decision_reason              text CHECK (char_length(decision_reason) <= 500),
  approver_subject_id          text,
  approver_authority_record_id text,
  consumed_at                  timestamptz,
  consumed_authority_record_id text,
  created_at                   timestamptz NOT NULL DEFAULT now(),
  created_by                   text,
  updated_at                   timestamptz NOT NULL DEFAULT now(),
  updated_by                   text,
  UNIQUE (zone_id, id),
  FOREIGN KEY (zone_id, application_id) REFERENCES applications (zone_id, id),
  CHECK (NOT (satisfied_at IS NOT NULL AND rejected_at IS NOT NULL))
);
CREATE UNIQUE INDEX step_up_challenges_one_open
  ON step_up_challenges (zone_id, principal_id, session_id, resource_set_hash) WHERE consumed_at IS NULL;
CREATE INDEX step_up_challenges_principal_idx ON step_up_challenges (zone_id, principal_id)
  WHERE consumed_at IS NULL;
CREATE INDEX step_up_challenges_recent_idx ON step_up_challenges (zone_id, created_at DESC);
CREATE INDEX step_up_challenges_expiry_idx ON step_up_challenges (expires_at);
CALL caracal_enable_zone_rls('step_up_challenges', ARRAY['caracal_sts']::name[]);
GRANT SELECT, UPDATE ON step_up_challenges TO caracal_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON step_up_challenges TO caracal_sts;

-- External OIDC issuers trusted for federation.
CREATE TABLE subject_issuers (
  id          text PRIMARY KEY,
  zone_id     text NOT NULL REFERENCES zones (id),
  issuer      text NOT NULL CHECK (char_length(issuer) BETWEEN 1 AND 2048),
  jwks_url    text NOT NULL CHECK (char_length(jwks_url) BETWEEN 1 AND 2048),
  audience    text,
  archived_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  created_by  text,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  updated_by  text,
  UNIQUE (zone_id, id)
);
CREATE UNIQUE INDEX subject_issuers_issuer_live ON subject_issuers (zone_id, issuer) WHERE archived_at IS NULL;
CALL caracal_enable_zone_rls('subject_issuers', ARRAY[]::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON subject_issuers TO caracal_api;
GRANT SELECT ON subject_issuers TO caracal_sts;

-- `caracal run` workloads (/v1/run/*).
CREATE TABLE workloads (
  id          text PRIMARY KEY,
  zone_id     text NOT NULL REFERENCES zones (id),
  name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  secret_hash text NOT NULL,
  bindings    jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(bindings) = 'array'),
  archived_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  created_by  text,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  updated_by  text,
  UNIQUE (zone_id, id),
  UNIQUE (zone_id, name)
);
CALL caracal_enable_zone_rls('workloads', ARRAY[]::name[]);
GRANT SELECT, INSERT, UPDATE, DELETE ON workloads TO caracal_api;
GRANT SELECT ON workloads TO caracal_sts;

