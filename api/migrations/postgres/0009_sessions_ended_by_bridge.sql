-- What every bridge heartbeat asks, once a second: the sessions on that bridge that ended
-- recently (Store::ended_unpaired). Served by (bridge, state) it read every session the bridge
-- had ever ended, then sorted them; this reads only the recent ones, in order.
CREATE INDEX sessions_ended_by_bridge ON sessions (bridge, ended_at) WHERE state = 'ended';
