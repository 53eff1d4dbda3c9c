-- What the API asks about sessions every second, served without reading the whole table.
-- Each bridge heartbeat: the sessions on that bridge that ended recently
-- (Store::ended_unpaired). Served by (bridge, state) it read every session the bridge had ever
-- ended, then sorted them.
CREATE INDEX sessions_ended_by_bridge ON sessions (bridge, ended_at) WHERE state = 'ended';
-- The sweep for bridges gone silent (Store::end_sessions_of_silent_bridges), inside a write
-- transaction: it scanned every session ever kept; this holds the open ones only.
CREATE INDEX sessions_open_by_bridge ON sessions (bridge, created_at) WHERE state <> 'ended';
