-- Pipeline instances: one row per run of a configured pipeline (GoCD's pipeline counter).
-- The plan is the pipeline's config as it was when the instance was triggered (JSON of
-- domain::pipeline_config::PipelineConfig): a reload never changes a running instance.
-- Names compare case-insensitively, as GoCD's do.
CREATE TABLE pipeline_instances (
    pipeline_name         TEXT NOT NULL COLLATE NOCASE,
    counter               INTEGER NOT NULL,
    label                 TEXT NOT NULL,
    plan                  TEXT NOT NULL,
    triggered_by          TEXT NOT NULL,            -- a user's name, or 'changes'
    environment           TEXT,
    environment_variables TEXT NOT NULL DEFAULT '{}', -- the environment's, at trigger time
    trigger_variables     TEXT NOT NULL DEFAULT '{}', -- given with the trigger
    created_at            INTEGER NOT NULL,          -- unix milliseconds
    PRIMARY KEY (pipeline_name, counter)
);

-- Stage runs: one row per run of a stage of an instance (a re-run is counter + 1). A stage
-- that has no row has not run (NotRun, or Awaiting when its turn came and it is manual).
-- `result` is set once every job of it completed.
CREATE TABLE stage_runs (
    pipeline_name    TEXT NOT NULL COLLATE NOCASE,
    pipeline_counter INTEGER NOT NULL,
    stage_name       TEXT NOT NULL COLLATE NOCASE,
    stage_counter    INTEGER NOT NULL,
    triggered_by     TEXT NOT NULL,                  -- who approved or re-ran it, or 'changes'
    result           TEXT CHECK (result IN ('Passed', 'Failed', 'Cancelled')),
    cancelled_by     TEXT,
    scheduled_at     INTEGER NOT NULL,
    completed_at     INTEGER,
    PRIMARY KEY (pipeline_name, pipeline_counter, stage_name, stage_counter),
    FOREIGN KEY (pipeline_name, pipeline_counter)
        REFERENCES pipeline_instances (pipeline_name, counter) ON DELETE CASCADE
);
CREATE INDEX job_runs_by_stage ON job_runs (pipeline_name, pipeline_counter, stage_name, stage_counter);

-- What a pipeline is now, apart from its instances: paused (with why, by whom) and locked
-- (the instance holding the lock, with `lock_behavior`).
CREATE TABLE pipeline_states (
    pipeline_name  TEXT PRIMARY KEY COLLATE NOCASE,
    paused         INTEGER NOT NULL DEFAULT 0,
    pause_cause    TEXT,
    paused_by      TEXT,
    paused_at      INTEGER,
    locked_by      INTEGER                           -- the counter of the locking instance
);
