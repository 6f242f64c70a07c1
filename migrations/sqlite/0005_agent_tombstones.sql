-- Deleted agents are remembered: an agent registering with a deleted uuid comes back Pending,
-- whatever key it presents, so nobody can take over a uuid by having it deleted.
CREATE TABLE deleted_agents (
    uuid       TEXT PRIMARY KEY NOT NULL,
    deleted_at INTEGER NOT NULL   -- unix milliseconds
);
