-- What GoCD's jobs need of their runs beyond the tasks: the stage's clean_workspace, the
-- pipeline's label, the job's timeout, and what the timeout watches.
-- The agent empties the sandbox before the tasks.
ALTER TABLE job_runs ADD COLUMN clean_workspace INTEGER NOT NULL DEFAULT 0;
-- GO_PIPELINE_LABEL (NULL: the counter).
ALTER TABLE job_runs ADD COLUMN pipeline_label TEXT;
-- Seconds of console silence before the server cancels the run (0: never; NULL: the server's
-- --default-job-timeout).
ALTER TABLE job_runs ADD COLUMN timeout_seconds INTEGER;
-- When the console last grew (unix milliseconds; NULL: never).
ALTER TABLE job_runs ADD COLUMN console_updated_at INTEGER;
-- Why the server cancelled the run itself (a timeout), written into the console at its end.
ALTER TABLE job_runs ADD COLUMN cancel_reason TEXT;
-- The timeout sweep reads the running runs only.
CREATE INDEX job_runs_running ON job_runs (build_id) WHERE state = 'Building';
