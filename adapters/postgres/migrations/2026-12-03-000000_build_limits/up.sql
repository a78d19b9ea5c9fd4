-- In-flight limits: a job's `max_in_flight` (or `serial`) and its `serial_groups`. Each
-- build carries its limits' keys and, at the same index, each key's cap. A claim passes
-- over a queued build while, for one of its keys, as many builds with that key as its
-- cap are running or queued ahead of it. Builds from before this migration have none.
ALTER TABLE builds
    ADD COLUMN limit_keys text[]    NOT NULL DEFAULT '{}',
    ADD COLUMN limit_max  integer[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT builds_limits_check
        CHECK (cardinality(limit_keys) = cardinality(limit_max) AND 0 < ALL (limit_max));

-- The claim's count of the live builds sharing a key: only queued and running builds
-- are indexed, so it follows the live workload, not the history.
CREATE INDEX builds_limit_keys_idx ON builds USING gin (limit_keys)
    WHERE state IN ('queued', 'running');
