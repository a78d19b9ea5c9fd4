-- The build queue. A build is claimed by one replica at a time: `worker` and `attempt`
-- name the lease (its token is the attempt), `lease_until` is when it lapses on the
-- server's clock. Rows are never deleted by the queue, so a build id that is not here
-- was never submitted.
CREATE TABLE builds (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline        text        NOT NULL,
    job             text        NOT NULL,
    spec            bytea       NOT NULL,
    state           text        NOT NULL DEFAULT 'queued'
                                CONSTRAINT builds_state_check
                                CHECK (state IN ('queued', 'running', 'succeeded', 'failed',
                                                 'errored', 'aborted')),
    worker          text        NULL,
    attempt         bigint      NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    steps_started   boolean     NOT NULL DEFAULT false,
    abort_requested text        NULL,
    reason          text        NULL,
    outcome         bytea       NULL,
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz NULL,
    finished_at     timestamptz NULL,
    lease_until     timestamptz NULL,
    -- A running build has a holder and a term; no other build has a term.
    CONSTRAINT builds_lease_check
        CHECK ((state = 'running') = (lease_until IS NOT NULL)
               AND (state <> 'running' OR worker IS NOT NULL)),
    -- Exactly the ended builds have an end time.
    CONSTRAINT builds_finished_check
        CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);

-- claim(), positions and depth: the queued builds in id (FIFO) order, and nothing else,
-- so the cost follows the length of the queue, not the history.
CREATE INDEX builds_queued_idx ON builds (id) WHERE state = 'queued';

-- reap_lapsed() and depth: the running builds by when their lease lapses.
CREATE INDEX builds_running_idx ON builds (lease_until) WHERE state = 'running';

-- list() of one pipeline, newest first.
CREATE INDEX builds_pipeline_idx ON builds (pipeline, id);

-- Each build's event log: seq 1, 2, 3, ... with no gaps, assigned under the build row's
-- lock. The log lives as long as its build.
CREATE TABLE build_events (
    build_id bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    seq      bigint NOT NULL CHECK (seq >= 1),
    kind     text   NOT NULL,
    data     text   NOT NULL,
    PRIMARY KEY (build_id, seq)
);
