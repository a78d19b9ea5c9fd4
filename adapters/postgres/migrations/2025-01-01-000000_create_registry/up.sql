-- Artifact records. `ref_count` mirrors the number of rows in artifact_refs for the
-- artifact and is changed in the same transaction as those rows, so the reaper can find
-- unreferenced artifacts through a small partial index instead of an anti-join over the
-- whole table.
CREATE TABLE artifacts (
    id           text        PRIMARY KEY,
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    build        text        NOT NULL,
    step         text        NOT NULL,
    name         text        NOT NULL,
    volume       text        NOT NULL CONSTRAINT artifacts_volume_key UNIQUE,
    state        text        NOT NULL DEFAULT 'creating'
                             CONSTRAINT artifacts_state_check
                             CHECK (state IN ('creating', 'ready', 'destroying')),
    size         bigint      NULL CHECK (size >= 0),
    digest       text        NULL,
    worker       text        NOT NULL,
    retain_until timestamptz NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    claimed_by   text        NULL,
    claimed_at   timestamptz NULL,
    ref_count    integer     NOT NULL DEFAULT 0 CHECK (ref_count >= 0),
    CONSTRAINT artifacts_claim_check
        CHECK ((state = 'destroying') = (claimed_at IS NOT NULL))
);

-- find(): oldest first, usually by build.
CREATE INDEX artifacts_build_idx ON artifacts (build, created_at, seq);
CREATE INDEX artifacts_created_idx ON artifacts (created_at, seq);

-- Reaper, unreferenced candidates: only rows with no reference at all and not yet
-- claimed are in this index, keyed by when their retention ends (never retained sorts
-- first), so a range scan up to `now` touches reapable rows only.
CREATE INDEX artifacts_unreferenced_idx
    ON artifacts ((COALESCE(retain_until, '-infinity'::timestamptz)), created_at)
    WHERE ref_count = 0 AND state <> 'destroying';

-- Reaper, stale claims of a crashed reaper.
CREATE INDEX artifacts_destroying_idx
    ON artifacts (claimed_at)
    WHERE state = 'destroying';

CREATE TABLE artifact_refs (
    artifact_id text        NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    worker      text        NOT NULL,
    build       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (artifact_id, worker, build)
);

-- release_all() and the reaper's "references of expired workers" candidates.
CREATE INDEX artifact_refs_holder_idx ON artifact_refs (worker, build);

CREATE TABLE workers (
    name           text        PRIMARY KEY,
    last_heartbeat timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);

CREATE INDEX workers_expires_idx ON workers (expires_at);
