//! The same behaviour checked on both implementations: in-process, and the Redis at
//! `REDIS_URL` (default: the machine's, `redis://127.0.0.1:6379`). An unreachable Redis fails
//! the test: it is never skipped.

use super::*;

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

async fn redis() -> RedisPresence {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    RedisPresence::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("Redis is not reachable at {url} ({e}): run scripts/test, which starts one, or set REDIS_URL"))
}

/// A fresh id per test run, so runs against a shared Redis never see each other's keys.
fn agent() -> AgentId {
    let mut bytes = [0u8; 16];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    bytes.copy_from_slice(&nanos.to_be_bytes());
    bytes[0] ^= u8::try_from(std::process::id() % 251).unwrap();
    AgentId(bamf_proto::san::Uuid::from_bytes(bytes))
}

async fn heartbeats_expire(p: &Presence, ordinal: u32) {
    let a = agent();
    assert!(!p.agent_online(a).await.unwrap());
    p.heartbeat_agent(a, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(p.agent_online(a).await.unwrap());
    let b = BridgeStatus {
        ordinal,
        load: 7,
        draining: false,
    };
    p.heartbeat_bridge(b, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(p.live_bridges().await.unwrap().contains(&b));
    // A heartbeat refreshes the status.
    let draining = BridgeStatus {
        draining: true,
        ..b
    };
    p.heartbeat_bridge(draining, Duration::from_millis(300))
        .await
        .unwrap();
    let live = p.live_bridges().await.unwrap();
    assert!(live.contains(&draining) && !live.contains(&b));
    // Forgotten at once, back with its next heartbeat.
    p.forget_bridge(ordinal).await.unwrap();
    assert!(!p.live_bridges().await.unwrap().contains(&draining));
    p.heartbeat_bridge(draining, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(p.live_bridges().await.unwrap().contains(&draining));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        !p.agent_online(a).await.unwrap(),
        "agent heartbeat outlived its TTL"
    );
    assert!(
        !p.live_bridges()
            .await
            .unwrap()
            .iter()
            .any(|x| x.ordinal == ordinal)
    );
}

/// `publisher` and `subscriber` may be two replicas (Redis) or the same node (memory).
async fn commands_reach_the_subscriber(publisher: &Presence, subscriber: &Presence) {
    let a = agent();
    assert_eq!(
        publisher
            .publish_command(a, "nobody listens")
            .await
            .unwrap(),
        0
    );
    let mut rx = subscriber.subscribe_commands(a).await.unwrap();
    assert_eq!(publisher.publish_command(a, "dial 1").await.unwrap(), 1);
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("dial 1"));
    // Another agent's commands do not arrive here.
    publisher
        .publish_command(agent(), "not for you")
        .await
        .unwrap();
    publisher.publish_command(a, "dial 2").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("dial 2"));
    // A subscriber that stops reading loses commands beyond its queue, nothing more.
    for i in 0..COMMAND_QUEUE + 10 {
        publisher
            .publish_command(a, &format!("flood {i}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut queued = 0;
    while rx.try_recv().is_ok() {
        queued += 1;
    }
    assert!(queued <= COMMAND_QUEUE, "{queued} queued");
    drop(rx);
    subscriber.ping().await.unwrap();
}

/// A value kept once is taken once, by any replica, and not after its TTL.
async fn kept_once_is_taken_once(one: &Presence, two: &Presence) {
    let key = format!("test-{}", agent());
    assert!(
        one.put_once(&key, "v1", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        !one.put_once(&key, "v2", Duration::from_secs(5))
            .await
            .unwrap(),
        "a live key is not replaced"
    );
    assert_eq!(two.take_once(&key).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(one.take_once(&key).await.unwrap(), None, "taken twice");
    let short = format!("{key}-short");
    assert!(
        one.put_once(&short, "v", Duration::from_millis(100))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        two.take_once(&short).await.unwrap(),
        None,
        "outlived its TTL"
    );
}

#[tokio::test]
async fn memory_presence() {
    let p = Presence::Memory(MemoryPresence::default());
    heartbeats_expire(&p, 1).await;
    commands_reach_the_subscriber(&p, &p).await;
    kept_once_is_taken_once(&p, &p).await;
}

#[tokio::test]
async fn redis_presence_shared_by_two_replicas() {
    let (one, two) = (
        Presence::Redis(redis().await),
        Presence::Redis(redis().await),
    );
    one.ping().await.unwrap();
    // An ordinal no real bridge uses, so a shared Redis is safe.
    heartbeats_expire(&one, 4_000_000_000 + (std::process::id() % 1000)).await;
    commands_reach_the_subscriber(&one, &two).await;
    kept_once_is_taken_once(&one, &two).await;
}

#[tokio::test]
async fn login_failures_are_counted_across_replicas_and_expire() {
    let (one, two) = (
        Presence::Redis(redis().await),
        Presence::Redis(redis().await),
    );
    // A documentation address (TEST-NET-2) no real client has, so a shared Redis is safe.
    let octet = u8::try_from(std::process::id() % 250).unwrap_or(0);
    let address = std::net::IpAddr::from([198, 51, 100, octet]);
    let window = std::time::Duration::from_secs(2);
    for replica in [&one, &two, &one] {
        replica.record_login_failure(address, window).await.unwrap();
    }
    assert_eq!(one.login_failures(address).await.unwrap(), 3);
    assert_eq!(two.login_failures(address).await.unwrap(), 3);
    // The window runs from the first failure: later ones do not extend it.
    tokio::time::sleep(window + std::time::Duration::from_millis(300)).await;
    assert_eq!(two.login_failures(address).await.unwrap(), 0);
    // In process, the guard counts by itself: nothing is shared.
    let memory = Presence::Memory(MemoryPresence::default());
    memory.record_login_failure(address, window).await.unwrap();
    assert_eq!(memory.login_failures(address).await.unwrap(), 0);
}

#[test]
fn bridge_status_round_trips_and_rejects_junk() {
    let b = BridgeStatus {
        ordinal: 3,
        load: 12,
        draining: true,
    };
    assert_eq!(BridgeStatus::decode(&b.encode()), Some(b));
    for junk in ["", "3", "3 x 1", "3 1 1 extra", "-1 0 0"] {
        assert_eq!(BridgeStatus::decode(junk), None, "{junk}");
    }
}
