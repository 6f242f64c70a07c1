-- A console that reached --max-console-bytes: the byte count it was cut at (NULL: not cut).
ALTER TABLE job_runs ADD COLUMN console_truncated_at INTEGER;
