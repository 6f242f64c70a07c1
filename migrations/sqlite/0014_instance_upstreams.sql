-- What an instance was built from: per dependency material, the upstream instance it runs
-- after (JSON [UpstreamRevision]); fetch tasks find the upstream's artifacts through it.
ALTER TABLE pipeline_instances ADD COLUMN upstream_revisions TEXT NOT NULL DEFAULT '[]';
