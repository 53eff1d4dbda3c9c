-- Sessions that outlive their bridge: the session's own key (SHA-256 of the public key its
-- first certificate certified; a resume must present it), the bridges it went through, how
-- often both sides attached again, since when its path is broken (NULL while attached), and
-- whether its agent gave its account of the end (then the byte counts are the application's).
ALTER TABLE sessions ADD COLUMN client_key TEXT;
ALTER TABLE sessions ADD COLUMN bridges TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN reattaches BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN detached_at BIGINT;
ALTER TABLE sessions ADD COLUMN agent_reported BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sessions_detached ON sessions (detached_at) WHERE detached_at IS NOT NULL;
