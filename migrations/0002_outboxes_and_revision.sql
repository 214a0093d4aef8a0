-- 0002 transactional outboxes (§7.1), the gateway binding revision and its trigger (§5.5),
-- the KEK canary (§10.1) and the STS mint-limit override.

-- Outbox of the API and the STS. Not row-level secured: dispatchers work across zones and
-- the grants restrict who may touch it.
CREATE TABLE event_outbox (
  id           text PRIMARY KEY,
  producer     text NOT NULL CHECK (producer IN ('api', 'sts')),
  zone_id      text NULL,
  topic        text NOT NULL CHECK (topic ~ '^[a-z0-9_.:-]{1,128}$'),
  dedupe_key   text NULL CHECK (char_length(dedupe_key) BETWEEN 1 AND 512),
  payload_json jsonb NOT NULL CHECK (jsonb_typeof(payload_json) = 'object'
                                     AND octet_length(payload_json::text) <= 1048576),
  status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'dead')),
  attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  available_at timestamptz NOT NULL DEFAULT now(),
  locked_until timestamptz,
  locked_by    text,
  last_error   text,
  request_id   text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz,
  CHECK ((status = 'published') = (published_at IS NOT NULL))
);
CREATE UNIQUE INDEX event_outbox_dedupe_key ON event_outbox (producer, topic, dedupe_key)
  WHERE dedupe_key IS NOT NULL;
CREATE INDEX event_outbox_available_idx ON event_outbox (available_at) WHERE status = 'pending';
CREATE INDEX event_outbox_pending_age_idx ON event_outbox (created_at) WHERE status = 'pending';
CREATE INDEX event_outbox_retention_idx ON event_outbox (status, updated_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON event_outbox TO caracal_api;
GRANT SELECT, INSERT, UPDATE ON event_outbox TO caracal_sts;

-- Outbox of the Coordinator; the producer CHECK keeps upstream's two values.
CREATE TABLE caracal_outbox (
  id           text PRIMARY KEY,
  producer     text NOT NULL CHECK (producer IN ('api', 'coordinator')),
  zone_id      text NULL,
  topic        text NOT NULL CHECK (topic ~ '^[a-z0-9_.:-]{1,128}$'),
  dedupe_key   text NULL CHECK (char_length(dedupe_key) BETWEEN 1 AND 512),
  payload_json jsonb NOT NULL CHECK (jsonb_typeof(payload_json) = 'object'
                                     AND octet_length(payload_json::text) <= 1048576),
  status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'dead')),
  attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  available_at timestamptz NOT NULL DEFAULT now(),
  locked_until timestamptz,
  locked_by    text,
  last_error   text,
  request_id   text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz,
  CHECK ((status = 'published') = (published_at IS NOT NULL))
);
CREATE UNIQUE INDEX caracal_outbox_dedupe_key ON caracal_outbox (producer, topic, dedupe_key)
  WHERE dedupe_key IS NOT NULL;
CREATE INDEX caracal_outbox_available_idx ON caracal_outbox (available_at) WHERE status = 'pending';
CREATE INDEX caracal_outbox_pending_age_idx ON caracal_outbox (created_at) WHERE status = 'pending';
CREATE INDEX caracal_outbox_retention_idx ON caracal_outbox (status, updated_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON caracal_outbox TO caracal_coordinator;

-- One global counter of everything the gateway snapshot contains (§5.5).
CREATE TABLE gateway_binding_revision (
  id         boolean PRIMARY KEY DEFAULT true CHECK (id),
  version    bigint NOT NULL CHECK (version >= 1),
  updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO gateway_binding_revision (id, version) VALUES (true, 1);

GRANT SELECT ON gateway_binding_revision TO caracal_api, caracal_gateway;

-- Statement-level AFTER trigger on every table the gateway snapshot reads: bump the
-- revision and enqueue the invalidation in the caller's transaction, so code cannot forget
-- it. SECURITY DEFINER: the callers (API, STS) have no write grant on either table.
CREATE FUNCTION caracal_bump_binding_revision() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = caracal, pg_catalog
AS $$
DECLARE
  new_version bigint;
BEGIN
  UPDATE gateway_binding_revision
     SET version = version + 1, updated_at = now()
   WHERE id
  RETURNING version INTO new_version;

  INSERT INTO event_outbox (id, producer, zone_id, topic, dedupe_key, payload_json)
  VALUES (caracal_uuid_v7(),
          CASE WHEN session_user = 'caracal_sts' THEN 'sts' ELSE 'api' END,
          NULL,
          'caracal.gateway.bindings.invalidate',
          'bindings:' || new_version,
          jsonb_build_object('zone_id', '*', 'revision', new_version::text))
  ON CONFLICT (producer, topic, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING;
  RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION caracal_bump_binding_revision() FROM PUBLIC;

-- KEK canary: a value sealed under ZONE_KEK at first start; services compare ids and
-- decrypt it to detect a wrong key (§10.1).
CREATE TABLE kek_check (
  id           boolean PRIMARY KEY DEFAULT true CHECK (id),
  dek_id       text NOT NULL CHECK (dek_id ~ '^kek:[0-9a-f]{16}$'),
  nonce        bytea NOT NULL CHECK (octet_length(nonce) = 12),
  ciphertext   bytea NOT NULL CHECK (octet_length(ciphertext) BETWEEN 16 AND 4096),
  created_at   timestamptz NOT NULL DEFAULT now(),
  rewrapped_at timestamptz
);
GRANT SELECT ON kek_check TO caracal_api, caracal_sts, caracal_gateway, caracal_audit;

-- Operator override of the STS mint limit (global singleton).
CREATE TABLE sts_rate_limit (
  singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  limit_per_minute integer NOT NULL CHECK (limit_per_minute >= 1),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  updated_by       text
);
GRANT SELECT, INSERT, UPDATE ON sts_rate_limit TO caracal_api;
GRANT SELECT ON sts_rate_limit TO caracal_sts;
