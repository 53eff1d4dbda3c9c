-- Audit retention: audit events stay append-only, except that the retention purge may delete
-- those older than its cutoff, and leaves a checkpoint of what it removed.
--
-- One row: the purge's cutoff (Unix ms; every event older than it has been purged) and
-- whether a purge is under way. The purge raises the cutoff and sets `purging` in its own
-- transaction, deletes, and clears `purging` before it commits, so no other transaction
-- ever sees `purging = 1`: outside a purge no event can be deleted at all, and inside one only
-- events older than the cutoff. The cutoff only moves forward and is always at least 12 hours
-- old by the database's clock, so no event of the last 12 hours can become deletable.
CREATE TABLE audit_retention (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    cutoff_ms BIGINT NOT NULL,
    purging   BIGINT NOT NULL DEFAULT 0 CHECK (purging IN (0, 1))
);
INSERT INTO audit_retention (id, cutoff_ms, purging) VALUES (1, 0, 0);

CREATE FUNCTION audit_retention_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'the audit retention row cannot be added or removed';
    END IF;
    IF NEW.cutoff_ms < OLD.cutoff_ms THEN
        RAISE EXCEPTION 'the audit retention cutoff only moves forward';
    END IF;
    IF NEW.cutoff_ms > (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - 43200000 THEN
        RAISE EXCEPTION 'the audit retention cutoff must be at least 12 hours old';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_retention_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_retention
    FOR EACH ROW EXECUTE FUNCTION audit_retention_guard();

-- Deleting an audit event: only by the purge, only older than its cutoff.
CREATE FUNCTION audit_events_delete_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_retention WHERE id = 1 AND purging = 1 AND OLD.at < cutoff_ms) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are append-only (only the retention purge removes events older than its cutoff)';
END;
$$;
DROP TRIGGER audit_events_no_delete ON audit_events;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_delete_guard();
-- TRUNCATE bypasses row triggers: refused outright.
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- The checkpoints: one per purge batch, append-only and never purged. `digest` is SHA-256
-- (hex) over the previous checkpoint's digest and every removed event in id order, so the
-- chain of checkpoints commits to everything ever removed.
CREATE TABLE audit_purges (
    id          BIGSERIAL PRIMARY KEY,
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
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_purges_no_delete BEFORE DELETE ON audit_purges
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_purges_no_truncate BEFORE TRUNCATE ON audit_purges
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- Ended sessions are purged by when they ended.
CREATE INDEX sessions_by_end ON sessions (ended_at) WHERE state = 'ended';
