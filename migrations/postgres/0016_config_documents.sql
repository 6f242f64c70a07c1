-- Config documents stored through the API (PUT /api/admin/config/{name}), whole: rows, so
-- every node reads the same ones; a write publishes `config_changed`, and each node reads
-- its sources again on hearing it. As migrations/sqlite/0016.
CREATE TABLE config_documents (
    name       TEXT COLLATE "C" PRIMARY KEY,
    text       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- What `--config` files each running node started with (a hash of their names and texts):
-- a node starting with files that differ from another live node's says so.
CREATE TABLE node_configs (
    node        TEXT COLLATE "C" PRIMARY KEY,
    config_hash TEXT COLLATE "C" NOT NULL,
    started_at  BIGINT NOT NULL
);
