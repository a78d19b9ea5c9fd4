DROP INDEX IF EXISTS builds_limit_keys_idx;
ALTER TABLE builds
    DROP CONSTRAINT IF EXISTS builds_limits_check,
    DROP COLUMN IF EXISTS limit_max,
    DROP COLUMN IF EXISTS limit_keys;
