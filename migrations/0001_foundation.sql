-- 0001 foundation: helper functions shared by every later file, and the zone registry.
--
-- Runs as caracal_owner inside schema caracal (the runner sets the role and search_path).
-- Roles, the schema and schema_migrations are ensured by `caracal migrate` before any file
-- runs (storage-and-events.md §2.2, §4.3); files only create objects and grant on them.

-- Functions are never executable by PUBLIC; each grant below is deliberate (§2.3).
ALTER DEFAULT PRIVILEGES FOR ROLE caracal_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- UUIDv7 (RFC 9562) for rows that SQL itself creates (outbox rows written by triggers).
-- Rust generates every other id. 48-bit unix milliseconds, then the random bits of a v4
-- UUID with the version nibble turned from 4 (0100) into 7 (0111).
CREATE FUNCTION caracal_uuid_v7() RETURNS text
LANGUAGE sql VOLATILE PARALLEL SAFE
SET search_path = caracal, pg_catalog
AS $$
  SELECT encode(
           set_bit(set_bit(
             overlay(uuid_send(gen_random_uuid())
                     PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                     FROM 1 FOR 6),
             52, 1), 53, 1),
           'hex')::uuid::text
$$;
REVOKE EXECUTE ON FUNCTION caracal_uuid_v7() FROM PUBLIC;

-- Row-level security for one zone-scoped table (§3.1). Fail-closed: with no
-- `caracal.zone_id` setting current_setting(..., true) is NULL (or '' after a
-- transaction-local setting ended); neither equals a zone id, so no row is visible and
-- every write fails the check. FORCE subjects the owner too. `*` is never a zone id (the
-- zones.id pattern excludes it) and opens reads only for the roles named here.
CREATE PROCEDURE caracal_enable_zone_rls(tbl regclass, cross_zone_readers name[])
LANGUAGE plpgsql
SET search_path = caracal, pg_catalog
AS $$
BEGIN
  EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
  EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
  EXECUTE format(
    $f$CREATE POLICY zone_isolation ON %s
         USING (zone_id = current_setting('caracal.zone_id', true))
         WITH CHECK (zone_id = current_setting('caracal.zone_id', true))$f$,
    tbl);
  IF cardinality(cross_zone_readers) > 0 THEN
    EXECUTE format(
      $f$CREATE POLICY cross_zone_read ON %s FOR SELECT TO %s
           USING (current_setting('caracal.zone_id', true) = '*')$f$,
      tbl,
      (SELECT string_agg(quote_ident(r), ', ') FROM unnest(cross_zone_readers) AS r));
  END IF;
END
$$;
REVOKE EXECUTE ON PROCEDURE caracal_enable_zone_rls(regclass, name[]) FROM PUBLIC;

-- Integrity triggers (§5.4). The message is the trigger argument so that partitions and
-- every table name the rule the way an operator reads it.
CREATE FUNCTION caracal_reject_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = caracal, pg_catalog
AS $$
BEGIN
  RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = '42501';
END
$$;
REVOKE EXECUTE ON FUNCTION caracal_reject_change() FROM PUBLIC;

-- Zones: the tenant and trust boundary. Not row-level secured: this is the registry that
-- every role reads; the admin API filters it by token scope.
CREATE TABLE zones (
  id                      text PRIMARY KEY
                          CONSTRAINT zones_id_pattern CHECK (id ~ '^[A-Za-z0-9._:-]{1,128}$'),
  name                    text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 256),
  slug                    text NOT NULL CONSTRAINT zones_slug_pattern CHECK (slug ~ '^[a-z0-9-]{1,63}$'),
  dcr_enabled             boolean NOT NULL DEFAULT false,
  dcr_shutdown            text NULL CHECK (dcr_shutdown IN ('keep_live', 'revoke_live')),
  operator_coauthor_badge boolean NOT NULL DEFAULT true,
  operator_governed       boolean NOT NULL DEFAULT false,
  archived_at             timestamptz,
  created_at              timestamptz NOT NULL DEFAULT now(),
  created_by              text,
  updated_at              timestamptz NOT NULL DEFAULT now(),
  updated_by              text,
  CONSTRAINT zones_slug_key UNIQUE (slug)
);
CREATE INDEX zones_live_idx ON zones (id) WHERE archived_at IS NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON zones TO caracal_api;
GRANT SELECT ON zones TO caracal_sts, caracal_gateway, caracal_coordinator, caracal_audit;
