-- Audit retention: audit events stay append-only, except that the retention purge may delete
-- those older than its cutoff, and leaves a checkpoint of what it removed.
--
-- One row: the purge's cutoff (Unix ms; every event older than it has been purged) and
-- whether a purge is under way. The purge raises the cutoff and sets `purging` in its own
-- transaction, deletes, and clears `purging` before it commits, so no other connection ever
-- sees `purging = 1`: outside a purge no event can be deleted at all, and inside one only
-- events older than the cutoff. The cutoff only moves forward and is always at least 12 hours
-- old by the database's clock, so no event of the last 12 hours can become deletable.
CREATE TABLE audit_retention (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    cutoff_ms BIGINT NOT NULL,
    purging   BIGINT NOT NULL DEFAULT 0 CHECK (purging IN (0, 1))
);
INSERT INTO audit_retention (id, cutoff_ms, purging) VALUES (1, 0, 0);

CREATE TRIGGER audit_retention_no_insert BEFORE INSERT ON audit_retention
BEGIN
    SELECT RAISE(ABORT, 'the audit retention row cannot be added or removed');
END;
CREATE TRIGGER audit_retention_no_delete BEFORE DELETE ON audit_retention
BEGIN
    SELECT RAISE(ABORT, 'the audit retention row cannot be added or removed');
END;
CREATE TRIGGER audit_retention_forward BEFORE UPDATE ON audit_retention
WHEN NEW.cutoff_ms < OLD.cutoff_ms
BEGIN
    SELECT RAISE(ABORT, 'the audit retention cutoff only moves forward');
END;
CREATE TRIGGER audit_retention_a_day_old BEFORE UPDATE ON audit_retention
WHEN NEW.cutoff_ms > CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 43200000
BEGIN
    SELECT RAISE(ABORT, 'the audit retention cutoff must be at least 12 hours old');
END;

-- Deleting an audit event: only by the purge, only older than its cutoff.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM audit_retention WHERE id = 1 AND purging = 1 AND OLD.at < cutoff_ms
)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only (only the retention purge removes events older than its cutoff)');
END;

-- The checkpoints: one per purge batch, append-only and never purged. `digest` is SHA-256
-- (hex) over the previous checkpoint's digest and every removed event in id order, so the
-- chain of checkpoints commits to everything ever removed.
CREATE TABLE audit_purges (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    cutoff_ms   BIGINT NOT NULL,
    events      BIGINT NOT NULL,
    first_id    BIGINT,
    last_id     BIGINT,
    oldest_at   BIGINT,
    newest_at   BIGINT,
    sessions    BIGINT NOT NULL,
    digest      TEXT NOT NULL
);
CREATE TRIGGER audit_purges_no_update BEFORE UPDATE ON audit_purges
BEGIN
    SELECT RAISE(ABORT, 'audit purge checkpoints are append-only');
END;
CREATE TRIGGER audit_purges_no_delete BEFORE DELETE ON audit_purges
BEGIN
    SELECT RAISE(ABORT, 'audit purge checkpoints are append-only');
END;

-- Ended sessions are purged by when they ended.
CREATE INDEX sessions_by_end ON sessions (ended_at) WHERE state = 'ended';
