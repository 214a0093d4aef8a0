-- 0011 session slots (authority §2.1 step 7, docs/decisions/0031): an upper bound of the
-- capacity slots each application holds in a zone, so that a session start reads a few rows
-- instead of counting every live session of the zone under the zone's start lock.
--
-- `held` counts the sessions inserted holding a slot (active or suspended) minus the releases
-- already folded in. A session that stops holding one (terminated, expired, deleted) leaves
-- a row in agent_session_slot_releases; the next start in its zone, which holds the zone's
-- start lock, deletes those rows and lowers `held`. Releases are plain inserts, so a cascade
-- never waits on a counter row, and only start transactions (one at a time per zone) update
-- counters. `held` is therefore never below the exact count; a task past its TTL or a service
-- past its lease still counts until swept, so a start that the bound would refuse counts
-- exactly instead.

CREATE TABLE agent_session_slots (
  zone_id        text NOT NULL REFERENCES zones (id) ON DELETE CASCADE,
  application_id text NOT NULL,
  held           bigint NOT NULL CHECK (held >= 0),
  PRIMARY KEY (zone_id, application_id)
);
CALL caracal_enable_zone_rls('agent_session_slots', ARRAY[]::name[]);
GRANT SELECT, UPDATE ON agent_session_slots TO caracal_coordinator;

CREATE TABLE agent_session_slot_releases (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  zone_id        text NOT NULL REFERENCES zones (id) ON DELETE CASCADE,
  application_id text NOT NULL
);
CREATE INDEX agent_session_slot_releases_zone_idx ON agent_session_slot_releases (zone_id);
CALL caracal_enable_zone_rls('agent_session_slot_releases', ARRAY[]::name[]);
GRANT SELECT, DELETE ON agent_session_slot_releases TO caracal_coordinator;

-- Row triggers keep the two tables in step with agent_sessions in the writer's transaction,
-- whoever the writer is. SECURITY DEFINER: the writers hold no grant on either table. The
-- counter row belongs to the session's zone, whatever zone the writer's transaction names
-- (a cross-zone maintenance write, a superuser): the function names the row's zone for its
-- own statements and gives the writer's setting back.
CREATE FUNCTION caracal_agent_session_slots() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = caracal, pg_catalog
AS $$
DECLARE
  writer_zone text := coalesce(current_setting('caracal.zone_id', true), '');
BEGIN
  -- NEW is null for a delete, so a deleted row takes the release branch.
  IF TG_OP <> 'DELETE' AND NEW.status IN ('active', 'suspended') THEN
    PERFORM set_config('caracal.zone_id', NEW.zone_id, true);
    INSERT INTO agent_session_slots (zone_id, application_id, held)
    VALUES (NEW.zone_id, NEW.application_id, 1)
    ON CONFLICT (zone_id, application_id)
      DO UPDATE SET held = agent_session_slots.held + 1;
  ELSE
    PERFORM set_config('caracal.zone_id', OLD.zone_id, true);
    INSERT INTO agent_session_slot_releases (zone_id, application_id)
    VALUES (OLD.zone_id, OLD.application_id);
  END IF;
  PERFORM set_config('caracal.zone_id', writer_zone, true);
  RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION caracal_agent_session_slots() FROM PUBLIC;

CREATE TRIGGER agent_sessions_slot_taken
  AFTER INSERT ON agent_sessions
  FOR EACH ROW WHEN (NEW.status IN ('active', 'suspended'))
  EXECUTE FUNCTION caracal_agent_session_slots();
CREATE TRIGGER agent_sessions_slot_changed
  AFTER UPDATE OF status ON agent_sessions
  FOR EACH ROW WHEN ((OLD.status IN ('active', 'suspended'))
                     IS DISTINCT FROM (NEW.status IN ('active', 'suspended')))
  EXECUTE FUNCTION caracal_agent_session_slots();
CREATE TRIGGER agent_sessions_slot_released
  AFTER DELETE ON agent_sessions
  FOR EACH ROW WHEN (OLD.status IN ('active', 'suspended'))
  EXECUTE FUNCTION caracal_agent_session_slots();

-- Sessions that exist when this migration runs, zone by zone: the migration runs as the
-- owner, whom the FORCEd zone policies also bind.
DO $$
DECLARE
  zone text;
BEGIN
  FOR zone IN SELECT id FROM zones LOOP
    PERFORM set_config('caracal.zone_id', zone, true);
    INSERT INTO agent_session_slots (zone_id, application_id, held)
    SELECT zone_id, application_id, count(*)
      FROM agent_sessions
     WHERE zone_id = zone AND status IN ('active', 'suspended')
     GROUP BY zone_id, application_id;
  END LOOP;
  PERFORM set_config('caracal.zone_id', '', true);
END
$$;
