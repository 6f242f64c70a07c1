-- Config documents stored through the API (PUT /api/admin/config/{name}), whole: rows, so
-- every node of an installation on PostgreSQL reads the same ones (they were files under the
-- data dir; the server moves those in at start).
CREATE TABLE config_documents (
    name       TEXT PRIMARY KEY NOT NULL,
    text       TEXT NOT NULL,
    updated_at INTEGER NOT NULL     -- unix milliseconds
);

-- What `--config` files each running node started with (a hash of their names and texts):
-- a node starting with files that differ from another live node's says so.
CREATE TABLE node_configs (
    node        TEXT PRIMARY KEY NOT NULL,
    config_hash TEXT NOT NULL,
    started_at  INTEGER NOT NULL
);
