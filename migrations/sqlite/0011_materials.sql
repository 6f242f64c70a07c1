-- Git materials as the server polls them: one row per repository and branch (its
-- fingerprint), however many pipelines share it.
CREATE TABLE materials (
    fingerprint    TEXT PRIMARY KEY,
    -- As configured, credentials removed.
    url            TEXT NOT NULL,
    branch         TEXT NOT NULL,
    last_revision  TEXT,
    -- Unix milliseconds of the last poll, whatever its outcome.
    last_polled_at INTEGER,
    -- Why the last poll failed (credentials scrubbed); NULL when it worked.
    error          TEXT
);

-- Every commit a poll found, in the order found.
CREATE TABLE modifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint  TEXT NOT NULL REFERENCES materials (fingerprint) ON DELETE CASCADE,
    revision     TEXT NOT NULL,
    author       TEXT NOT NULL,
    committed_at INTEGER NOT NULL,
    message      TEXT NOT NULL,
    files        TEXT NOT NULL DEFAULT '[]', -- JSON [path]
    UNIQUE (fingerprint, revision)
);
