-- Who did what: every change a person makes is an entry, and the things changed remember
-- their last actor (GoCD shows "by alice" beside them).
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,   -- unix milliseconds
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL
);
ALTER TABLE job_runs ADD COLUMN scheduled_by TEXT;
ALTER TABLE job_runs ADD COLUMN cancelled_by TEXT;
ALTER TABLE agents ADD COLUMN last_changed_by TEXT;
