-- Credentials are bound to an immutable user id, never to a name: a user deleted and created
-- again under the same name starts with nothing of the old one's.
ALTER TABLE users ADD COLUMN id TEXT;
UPDATE users SET id = lower(hex(randomblob(16))) WHERE id IS NULL;
CREATE UNIQUE INDEX users_by_id ON users (id);

-- API tokens, durable (they survive a Redis or API restart); only a hash is kept.
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX api_tokens_by_user ON api_tokens (user_id, created_at);

-- Every certificate the CA issued, so a revocation by serial or by fingerprint finds what the
-- certificate names (subject: user id, agent id, bridge ordinal or session id) and ends what
-- was derived from it.
CREATE TABLE issued_certificates (
    serial      TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'agent', 'bridge', 'client')),
    subject     TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX issued_by_subject ON issued_certificates (kind, subject);
CREATE INDEX sessions_by_agent ON sessions (agent_id, state);
CREATE INDEX sessions_by_bridge ON sessions (bridge, state);
