-- Agents as GoCD knows them. Resources and environments are JSON arrays of names;
-- the token is stored only as its SHA-256 hash (hex).
CREATE TABLE agents (
    uuid               TEXT PRIMARY KEY NOT NULL,
    hostname           TEXT NOT NULL,
    ip_address         TEXT NOT NULL DEFAULT '',
    sandbox            TEXT NOT NULL DEFAULT '',
    operating_system   TEXT NOT NULL DEFAULT '',
    free_space         INTEGER,              -- bytes; NULL means "unknown"
    agent_version      TEXT NOT NULL DEFAULT '',
    agent_config_state TEXT NOT NULL CHECK (agent_config_state IN ('Pending', 'Enabled', 'Disabled')),
    agent_state        TEXT NOT NULL CHECK (agent_state IN ('Idle', 'Building', 'LostContact', 'Missing', 'Unknown')),
    resources          TEXT NOT NULL DEFAULT '[]',
    environments       TEXT NOT NULL DEFAULT '[]',
    token_hash         TEXT NOT NULL UNIQUE,
    registered_at      INTEGER NOT NULL,     -- unix milliseconds
    last_contact_at    INTEGER               -- unix milliseconds
);
