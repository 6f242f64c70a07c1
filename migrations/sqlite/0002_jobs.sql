-- Job runs: one row per run of a job. A rescheduled job gets a new run (new build_id) with
-- the same names and counters; the old run ends Completed/Cancelled.
CREATE TABLE job_runs (
    build_id              INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_name         TEXT NOT NULL,
    pipeline_counter      INTEGER NOT NULL,
    stage_name            TEXT NOT NULL,
    stage_counter         INTEGER NOT NULL,
    job_name              TEXT NOT NULL,
    tasks                 TEXT NOT NULL,            -- JSON [{command, args, working_dir?}]
    resources             TEXT NOT NULL DEFAULT '[]',
    environment           TEXT,
    environment_variables TEXT NOT NULL DEFAULT '{}',
    state                 TEXT NOT NULL CHECK (state IN ('Scheduled', 'Assigned', 'Preparing', 'Building', 'Completing', 'Completed')),
    result                TEXT NOT NULL DEFAULT 'Unknown' CHECK (result IN ('Unknown', 'Passed', 'Failed', 'Cancelled')),
    agent_uuid            TEXT,
    cancel_requested      INTEGER NOT NULL DEFAULT 0,
    console_length        INTEGER NOT NULL DEFAULT 0,
    rescheduled_from      INTEGER,
    scheduled_at          INTEGER NOT NULL,          -- unix milliseconds
    completed_at          INTEGER
);
CREATE INDEX job_runs_queue ON job_runs (build_id) WHERE state = 'Scheduled';
CREATE INDEX job_runs_by_agent ON job_runs (agent_uuid, build_id);
CREATE INDEX job_runs_by_pipeline ON job_runs (pipeline_name, pipeline_counter);

-- Every state a run entered, with its time (GoCD's job_state_transitions).
CREATE TABLE job_state_transitions (
    build_id INTEGER NOT NULL REFERENCES job_runs (build_id) ON DELETE CASCADE,
    state    TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (build_id, state)
);

-- The console: append-only chunks addressed by their first byte's offset. An append costs
-- the chunk, never the log.
CREATE TABLE console_chunks (
    build_id     INTEGER NOT NULL REFERENCES job_runs (build_id) ON DELETE CASCADE,
    start_offset INTEGER NOT NULL,
    bytes        BLOB NOT NULL,
    PRIMARY KEY (build_id, start_offset)
);
