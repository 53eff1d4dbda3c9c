-- Revocations by certificate serial or by SHA-256 fingerprint (either may be unknown), and
-- who revoked. The 0001 table keyed only by serial; it was never written to.
DROP TABLE revoked_certificates;
CREATE TABLE revoked_certificates (
    serial      TEXT,
    fingerprint TEXT,
    reason      TEXT NOT NULL,
    revoked_by  TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    CHECK (serial IS NOT NULL OR fingerprint IS NOT NULL)
);
CREATE UNIQUE INDEX revoked_by_serial ON revoked_certificates (serial);
CREATE UNIQUE INDEX revoked_by_fingerprint ON revoked_certificates (fingerprint);

-- Resources name the agent that reported them; a name belongs to one agent at a time.
CREATE INDEX resources_by_agent ON resources (agent_id);
