-- 0008 audit ledger (§1.7, §5, §8): the partitioned, append-only decision ledger, its
-- partition maintenance functions, the admin action chain, and the operator tables.

-- The decision ledger, chained per zone. No foreign key to zones: events about requests
-- that name an unknown zone must still be recorded (docs/decisions/0004).
CREATE TABLE audit_events (
  id                        text NOT NULL CHECK (id ~ '^[A-Za-z0-9._:-]{1,128}$'),
  zone_id                   text NOT NULL CHECK (zone_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
  event_type                text NOT NULL CHECK (event_type ~ '^[a-z0-9_.]{1,64}$'),
  request_id                text,
  decision                  text CHECK (decision IN ('allow', 'deny', 'partial')),
  policy_set_id             text,
  policy_set_version_id     text,
  manifest_sha              text,
  evaluation_status         text,
  determining_policies_json jsonb,
  diagnostics_json          jsonb,
  metadata_json             jsonb,
  occurred_at               timestamptz NOT NULL,
  ingested_at               timestamptz NOT NULL DEFAULT now(),
  hash_version              smallint NOT NULL DEFAULT 1 CHECK (hash_version = 1),
  content_sha256            bytea NOT NULL CHECK (octet_length(content_sha256) = 32),
  prev_content_sha256       bytea NULL CHECK (octet_length(prev_content_sha256) = 32),
  chain_seq                 bigint NOT NULL CHECK (chain_seq >= 1),
  chain_hmac                bytea NULL CHECK (octet_length(chain_hmac) = 32),
  chain_key_id              text NULL CHECK (chain_key_id ~ '^[0-9a-f]{16}$'),
  ingest_signature          bytea NULL CHECK (octet_length(ingest_signature) = 32),
  PRIMARY KEY (id, occurred_at),
  CHECK ((chain_seq = 1) = (prev_content_sha256 IS NULL))
) PARTITION BY RANGE (occurred_at);

CREATE INDEX audit_events_chain_idx ON audit_events (zone_id, chain_seq DESC);
CREATE INDEX audit_events_occurred_idx ON audit_events (zone_id, occurred_at DESC);
CREATE INDEX audit_events_ingested_idx ON audit_events (zone_id, ingested_at);
CREATE INDEX audit_events_request_idx ON audit_events (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX audit_events_id_idx ON audit_events (id);
CREATE INDEX audit_events_application_idx
  ON audit_events (zone_id, (metadata_json ->> 'application_id'), occurred_at DESC);
CREATE INDEX audit_events_session_idx ON audit_events (zone_id, (metadata_json ->> 'session_id'));
CREATE INDEX audit_events_agent_session_idx ON audit_events (zone_id, (metadata_json ->> 'agent_session_id'));
CREATE INDEX audit_events_labels_idx ON audit_events USING gin ((metadata_json -> 'agent_labels'));

CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

CALL caracal_enable_zone_rls('audit_events', ARRAY['caracal_audit']::name[]);
GRANT SELECT, INSERT ON audit_events TO caracal_audit;

-- Append-only (§5.4). DELETE passes only while the transaction-local flag
-- caracal.audit_partition_move is 'on', which caracal_audit_ensure_partitions sets to move
-- rows out of the default partition.
CREATE FUNCTION caracal_audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = caracal, pg_catalog
AS $$
BEGIN
  IF TG_OP = 'DELETE' AND current_setting('caracal.audit_partition_move', true) = 'on' THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'audit_events rows are append-only' USING ERRCODE = '42501';
END
$$;
REVOKE EXECUTE ON FUNCTION caracal_audit_events_append_only() FROM PUBLIC;

-- Row triggers on the parent are cloned to every partition; TRUNCATE triggers are not, so
-- each partition gets its own (below and in caracal_audit_ensure_partitions).
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION caracal_audit_events_append_only();
CREATE TRIGGER audit_events_append_only_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_audit_events_append_only();
CREATE TRIGGER audit_events_append_only_truncate BEFORE TRUNCATE ON audit_events_default
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_audit_events_append_only();

-- Create the monthly partitions for the month of p_now and the p_ahead following months
-- (UTC), with explicit +00 bounds (§5.1, §5.2). Rows already in the default partition for a
-- new month are moved into it in the same transaction. Returns the partitions created.
CREATE FUNCTION caracal_audit_ensure_partitions(p_now timestamptz, p_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = caracal, pg_catalog
SET lock_timeout = '5s'
AS $$
DECLARE
  month_start timestamp := date_trunc('month', p_now AT TIME ZONE 'UTC');
  lower_bound timestamp;
  upper_bound timestamp;
  part        text;
  lower_text  text;
  upper_text  text;
  created     integer := 0;
BEGIN
  IF p_now IS NULL OR p_ahead IS NULL OR p_ahead < 0 OR p_ahead > 36 THEN
    RAISE EXCEPTION 'caracal_audit_ensure_partitions: p_now must be set and p_ahead between 0 and 36'
      USING ERRCODE = '22023';
  END IF;
  FOR m IN 0 .. p_ahead LOOP
    lower_bound := month_start + make_interval(months => m);
    upper_bound := month_start + make_interval(months => m + 1);
    part := 'audit_events_y' || to_char(lower_bound, 'YYYY') || 'm' || to_char(lower_bound, 'MM');
    CONTINUE WHEN to_regclass('caracal.' || quote_ident(part)) IS NOT NULL;
    lower_text := to_char(lower_bound, 'YYYY-MM-DD HH24:MI:SS') || '+00';
    upper_text := to_char(upper_bound, 'YYYY-MM-DD HH24:MI:SS') || '+00';

    IF EXISTS (SELECT 1 FROM audit_events_default
                WHERE occurred_at >= lower_text::timestamptz AND occurred_at < upper_text::timestamptz) THEN
      EXECUTE format('CREATE TABLE caracal.%I (LIKE caracal.audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
      PERFORM set_config('caracal.audit_partition_move', 'on', true);
      EXECUTE format(
        'WITH moved AS (DELETE FROM caracal.audit_events_default
                          WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *)
         INSERT INTO caracal.%I SELECT * FROM moved', part)
        USING lower_text::timestamptz, upper_text::timestamptz;
      PERFORM set_config('caracal.audit_partition_move', 'off', true);
      EXECUTE format('ALTER TABLE caracal.audit_events ATTACH PARTITION caracal.%I FOR VALUES FROM (%L) TO (%L)',
                     part, lower_text, upper_text);
    ELSE
      EXECUTE format('CREATE TABLE caracal.%I PARTITION OF caracal.audit_events FOR VALUES FROM (%L) TO (%L)',
                     part, lower_text, upper_text);
    END IF;
    EXECUTE format('CREATE TRIGGER audit_events_append_only_truncate BEFORE TRUNCATE ON caracal.%I
                      FOR EACH STATEMENT EXECUTE FUNCTION caracal_audit_events_append_only()', part);
    created := created + 1;
  END LOOP;
  RETURN created;
END
$$;
REVOKE EXECUTE ON FUNCTION caracal_audit_ensure_partitions(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION caracal_audit_ensure_partitions(timestamptz, integer) TO caracal_audit;

-- Chain links kept when retention drops rows (§5.3), so the verifier can bridge the gap.
CREATE TABLE audit_chain_anchors (
  zone_id        text NOT NULL,
  chain_seq      bigint NOT NULL CHECK (chain_seq >= 1),
  content_sha256 bytea NOT NULL CHECK (octet_length(content_sha256) = 32),
  chain_hmac     bytea NULL CHECK (octet_length(chain_hmac) = 32),
  chain_key_id   text NULL,
  partition_name text NOT NULL,
  recorded_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (zone_id, chain_seq)
);
GRANT SELECT ON audit_chain_anchors TO caracal_audit;

-- Drop the monthly partitions whose upper bound is at or before p_cutoff (§5.3). When export
-- is on (p_exported_through is not NULL) a partition is skipped unless everything in it was
-- exported. Before the drop, each row whose chain successor is not in the same partition is
-- kept as an anchor. The default partition is never dropped. Returns the dropped names.
CREATE FUNCTION caracal_audit_drop_partitions(p_cutoff timestamptz, p_exported_through timestamptz DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = caracal, pg_catalog
SET lock_timeout = '5s'
AS $$
DECLARE
  part          record;
  upper_bound   timestamptz;
  last_ingested timestamptz;
BEGIN
  IF p_cutoff IS NULL THEN
    RAISE EXCEPTION 'caracal_audit_drop_partitions: p_cutoff must be set' USING ERRCODE = '22023';
  END IF;
  FOR part IN
    SELECT c.relname AS name,
           substring(c.relname FROM '^audit_events_y([0-9]{4})m[0-9]{2}$')::integer AS y,
           substring(c.relname FROM '^audit_events_y[0-9]{4}m([0-9]{2})$')::integer AS m
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'caracal.audit_events'::regclass
       AND c.relname ~ '^audit_events_y[0-9]{4}m[0-9]{2}$'
     ORDER BY c.relname
  LOOP
    upper_bound := make_timestamptz(part.y, part.m, 1, 0, 0, 0, 'UTC') + interval '1 month';
    CONTINUE WHEN upper_bound > p_cutoff;
    IF p_exported_through IS NOT NULL THEN
      EXECUTE format('SELECT max(ingested_at) FROM caracal.%I', part.name) INTO last_ingested;
      CONTINUE WHEN last_ingested IS NOT NULL AND p_exported_through < last_ingested;
    END IF;
    EXECUTE format(
      'INSERT INTO caracal.audit_chain_anchors
              (zone_id, chain_seq, content_sha256, chain_hmac, chain_key_id, partition_name)
       SELECT p.zone_id, p.chain_seq, p.content_sha256, p.chain_hmac, p.chain_key_id, %L
         FROM caracal.%I p
        WHERE NOT EXISTS (SELECT 1 FROM caracal.%I q
                           WHERE q.zone_id = p.zone_id AND q.chain_seq = p.chain_seq + 1)
       ON CONFLICT (zone_id, chain_seq) DO NOTHING',
      part.name, part.name, part.name);
    EXECUTE format('DROP TABLE caracal.%I', part.name);
    RETURN NEXT part.name;
  END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION caracal_audit_drop_partitions(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION caracal_audit_drop_partitions(timestamptz, timestamptz) TO caracal_audit;

-- Control-plane action log, chained per zone (one global chain for zone_id IS NULL).
CREATE TABLE admin_audit_events (
  id                  text PRIMARY KEY,
  zone_id             text NULL REFERENCES zones (id),
  request_id          text,
  actor_id            text NOT NULL,
  actor_name          text,
  actor_scope         text,
  action              text NOT NULL,
  method              text NOT NULL,
  path                text NOT NULL,
  entity_type         text,
  entity_id           text,
  status_code         integer NOT NULL CHECK (status_code BETWEEN 100 AND 599),
  payload_json        jsonb,
  occurred_at         timestamptz NOT NULL,
  hash_version        smallint NOT NULL DEFAULT 1 CHECK (hash_version = 1),
  content_sha256      bytea NOT NULL CHECK (octet_length(content_sha256) = 32),
  prev_content_sha256 bytea NULL CHECK (octet_length(prev_content_sha256) = 32),
  chain_seq           bigint NOT NULL CHECK (chain_seq >= 1),
  chain_hmac          bytea NULL CHECK (octet_length(chain_hmac) = 32),
  chain_key_id        text NULL,
  created_at          timestamptz NOT NULL DEFAULT now(),
  CHECK ((chain_seq = 1) = (prev_content_sha256 IS NULL))
);
CREATE UNIQUE INDEX admin_audit_events_chain_key ON admin_audit_events ((coalesce(zone_id, '*')), chain_seq);
CREATE INDEX admin_audit_events_occurred_idx ON admin_audit_events (zone_id, occurred_at DESC);
CREATE INDEX admin_audit_events_actor_idx ON admin_audit_events (actor_id, occurred_at DESC);
CREATE INDEX admin_audit_events_request_idx ON admin_audit_events (request_id);
CALL caracal_enable_zone_rls('admin_audit_events', ARRAY['caracal_api', 'caracal_audit']::name[]);
CREATE POLICY global_rows ON admin_audit_events FOR ALL TO caracal_api
  USING (zone_id IS NULL AND current_setting('caracal.zone_id', true) = '*')
  WITH CHECK (zone_id IS NULL AND current_setting('caracal.zone_id', true) = '*');
GRANT SELECT, INSERT ON admin_audit_events TO caracal_api;
GRANT SELECT ON admin_audit_events TO caracal_audit;

-- Export progress.
CREATE TABLE audit_export_watermark (
  name               text PRIMARY KEY,
  last_exported_hour timestamptz,
  updated_at         timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON audit_export_watermark TO caracal_audit;

-- Tamper and ingest findings: an operator table for the audit role only.
CREATE TABLE audit_ingest_alerts (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  event_id    text NOT NULL,
  zone_id     text NOT NULL,
  chain_seq   bigint NULL,
  kind        text NOT NULL CHECK (kind IN (
                'content_mismatch', 'chain_break', 'sequence_gap', 'hmac_mismatch', 'unknown_key_id',
                'ingest_signature_mismatch', 'duplicate_event_id', 'content_mismatch_on_replay',
                'missing_entry')),
  detail      text,
  observed_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (kind, zone_id, event_id)
);
CREATE INDEX audit_ingest_alerts_recent_idx ON audit_ingest_alerts (zone_id, observed_at DESC);
GRANT SELECT, INSERT ON audit_ingest_alerts TO caracal_audit;

-- Append-only, with no exception, for the admin chain, the alerts and the anchors.
CREATE TRIGGER admin_audit_events_append_only BEFORE UPDATE OR DELETE ON admin_audit_events
  FOR EACH ROW EXECUTE FUNCTION caracal_reject_change('admin_audit_events rows are append-only');
CREATE TRIGGER admin_audit_events_append_only_truncate BEFORE TRUNCATE ON admin_audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_reject_change('admin_audit_events rows are append-only');
CREATE TRIGGER audit_ingest_alerts_append_only BEFORE UPDATE OR DELETE ON audit_ingest_alerts
  FOR EACH ROW EXECUTE FUNCTION caracal_reject_change('audit_ingest_alerts rows are append-only');
CREATE TRIGGER audit_ingest_alerts_append_only_truncate BEFORE TRUNCATE ON audit_ingest_alerts
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_reject_change('audit_ingest_alerts rows are append-only');
CREATE TRIGGER audit_chain_anchors_append_only BEFORE UPDATE OR DELETE ON audit_chain_anchors
  FOR EACH ROW EXECUTE FUNCTION caracal_reject_change('audit_chain_anchors rows are append-only');
CREATE TRIGGER audit_chain_anchors_append_only_truncate BEFORE TRUNCATE ON audit_chain_anchors
  FOR EACH STATEMENT EXECUTE FUNCTION caracal_reject_change('audit_chain_anchors rows are append-only');

-- The current month and the three following ones exist from the start (§5.2).
SELECT caracal_audit_ensure_partitions(now(), 3);
