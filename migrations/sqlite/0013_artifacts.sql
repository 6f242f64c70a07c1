-- The files each job run published (the artifacts issue). The file itself lives under
-- --artifacts-dir, at BUILD_ID/files/PATH; a row is written only once the file is complete
-- (checked against its SHA-256 and renamed into place).
CREATE TABLE artifacts (
    build_id    INTEGER NOT NULL REFERENCES job_runs (build_id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    -- The path case-folded: one of two names that differ only in case, per job.
    folded_path TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (build_id, folded_path)
);
