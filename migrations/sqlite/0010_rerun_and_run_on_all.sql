-- Two things GoCD's stages need of a job run.
-- A job not run again when only some of a stage's jobs run again (GoCD's "rerun failed jobs",
-- "rerun selected jobs") is copied into the new stage run with its result: the run it copies.
ALTER TABLE job_runs ADD COLUMN copied_from INTEGER;
-- `run_instances: all` gives one copy per matching agent; each copy runs on that agent only.
ALTER TABLE job_runs ADD COLUMN pinned_agent TEXT;
