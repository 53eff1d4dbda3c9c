-- BAMF control-plane schema, PostgreSQL. Times are Unix milliseconds (BIGINT) so that one
-- set of queries serves PostgreSQL and SQLite; ids are canonical UUID text; flags are 0/1
-- BIGINTs (sqlx's Any driver cannot decode SQLite booleans).

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at    BIGINT NOT NULL
);

-- rules: JSON {"allow": [...], "deny": [...]} over resource labels and names.
CREATE TABLE roles (
    name       TEXT PRIMARY KEY,
    rules      TEXT NOT NULL,
    builtin    BIGINT NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
    created_at BIGINT NOT NULL
);

CREATE TABLE role_bindings (
    user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    role_name TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    PRIMARY KEY (user_name, role_name)
);

-- Shown once at creation; only a hash is kept.
CREATE TABLE join_tokens (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL CHECK (kind IN ('agent', 'bridge')),
    expires_at BIGINT NOT NULL,
    max_uses   BIGINT NOT NULL CHECK (max_uses > 0),
    uses       BIGINT NOT NULL DEFAULT 0,
    revoked    BIGINT NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE agents (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    labels       TEXT NOT NULL DEFAULT '{}',
    cert_serial  TEXT,
    joined_at    BIGINT NOT NULL,
    last_seen_at BIGINT
);

CREATE TABLE bridges (
    ordinal      BIGINT PRIMARY KEY,
    cert_serial  TEXT,
    joined_at    BIGINT NOT NULL,
    last_seen_at BIGINT
);

-- The last catalog each agent reported.
CREATE TABLE resources (
    name       TEXT PRIMARY KEY,
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('ssh', 'postgres', 'tcp')),
    labels     TEXT NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    resource   TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    bridge     BIGINT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'active', 'ended')),
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at   BIGINT,
    bytes_up   BIGINT NOT NULL DEFAULT 0,
    bytes_down BIGINT NOT NULL DEFAULT 0,
    end_reason TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_name, created_at);
CREATE INDEX sessions_by_state ON sessions (state);

-- Append-only: the triggers below refuse every UPDATE and DELETE.
CREATE TABLE audit_events (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_at ON audit_events (at);
CREATE INDEX audit_by_actor ON audit_events (actor, id);
CREATE INDEX audit_by_kind ON audit_events (kind, id);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- One row: the CA. key_pem is encrypted when key_encrypted (key from the environment).
CREATE TABLE certificate_authority (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem      TEXT NOT NULL,
    key_pem       TEXT NOT NULL,
    key_encrypted BIGINT NOT NULL CHECK (key_encrypted IN (0, 1)),
    created_at    BIGINT NOT NULL
);

CREATE TABLE revoked_certificates (
    serial     TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
