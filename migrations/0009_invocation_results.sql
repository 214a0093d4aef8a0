-- 0009 invocations (issue 7): what a durable invocation returned, and when a pending one may
-- be claimed again (retry backoff). The rest of agent_invocations is in 0006.

ALTER TABLE agent_invocations
  ADD COLUMN result_json jsonb NULL CHECK (octet_length(result_json::text) <= 1048576),
  ADD COLUMN available_at timestamptz NOT NULL DEFAULT now();

-- The claim: the oldest due pending invocation of a service.
CREATE INDEX agent_invocations_pending_idx ON agent_invocations (zone_id, service_id, available_at)
  WHERE status = 'pending';
