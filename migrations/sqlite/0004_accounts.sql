-- Who may use the server beyond its agents: the users themselves live in the password file;
-- their sessions and personal access tokens are rows, so several nodes can share them later.
-- Secrets are stored only as their SHA-256 hash (hex).
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY NOT NULL,
    username    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,   -- unix milliseconds
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE access_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL,
    description   TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    revoke_cause  TEXT
);
CREATE INDEX access_tokens_by_user ON access_tokens (username, id);
