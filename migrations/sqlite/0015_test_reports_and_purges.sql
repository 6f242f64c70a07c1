-- Whether each artifact was published as a build or a test artifact, and what the JUnit XML
-- reports among a job's test artifacts say (read once, when each is stored).
ALTER TABLE artifacts ADD COLUMN kind TEXT NOT NULL DEFAULT 'build';
CREATE TABLE test_reports (
    build_id INTEGER NOT NULL REFERENCES job_runs (build_id) ON DELETE CASCADE,
    path     TEXT NOT NULL,
    -- JSON TestSummary: tests, failures, errors, skipped, failing [{name, message}].
    summary  TEXT NOT NULL,
    PRIMARY KEY (build_id, path)
);
-- Runs whose artifacts were deleted by --artifacts-keep (their pages say so).
CREATE TABLE artifact_purges (
    build_id  INTEGER PRIMARY KEY REFERENCES job_runs (build_id) ON DELETE CASCADE,
    purged_at INTEGER NOT NULL
);
