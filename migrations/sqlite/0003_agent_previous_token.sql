-- A re-registration whose answer was lost is retried with the token the agent still holds:
-- the previous token stays good for re-registration only, until the new one is first used.
ALTER TABLE agents ADD COLUMN previous_token_hash TEXT;
