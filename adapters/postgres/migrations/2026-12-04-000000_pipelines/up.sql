-- Pipelines recorded by builds' `set_pipeline` steps, keyed by team, name and instance
-- vars (canonical JSON text, so equal values compare equal). `vars` is what the server
-- sealed; the queue never reads it. `set_by` is not a foreign key: a pipeline outlives
-- the history of the build that set it.
CREATE TABLE pipelines (
    team          text        NOT NULL,
    name          text        NOT NULL,
    instance_vars text        NOT NULL DEFAULT '{}',
    config        text        NOT NULL,
    vars          bytea       NOT NULL DEFAULT '\x',
    file          text        NOT NULL,
    version       bigint      NOT NULL DEFAULT 1 CHECK (version > 0),
    set_by        bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team, name, instance_vars)
);
