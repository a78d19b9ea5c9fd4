-- A worker name is held by one live process at a time: the session (random per process)
-- that registered it. Rows from before sessions existed have none and, once expired, are
-- taken over like any other.
ALTER TABLE workers ADD COLUMN session text NOT NULL DEFAULT '';
