-- What an instance was built from: per git material, the revision it runs and the one the
-- instance before it ran (JSON [MaterialRevision]).
ALTER TABLE pipeline_instances ADD COLUMN material_revisions TEXT NOT NULL DEFAULT '[]';
