//! Audit retention on both backends, with the purge's clock injected.

use super::*;
use crate::purge::purge;

const DAY: i64 = 86_400_000;

async fn ended_session(s: &Store, id: &str, ended_at: i64) {
    create_session(s, &session(id, "alice", "agent-1", 0)).await;
    assert!(s.end_session(id, "closed", ended_at).await.unwrap());
}

#[tokio::test]
async fn retention_purges_only_old_rows_records_a_checkpoint_and_is_audited() {
    let now = crate::now_ms();
    let thirty_days = std::time::Duration::from_secs(30 * 86_400);
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        let old_a = s
            .append_audit(&event(now - 100 * DAY, "user:alice", "auth.login"))
            .await
            .unwrap();
        let old_b = s
            .append_audit(&event(now - 40 * DAY, "user:bob", "auth.login"))
            .await
            .unwrap();
        let old_c = s
            .append_audit(&event(now - 31 * DAY, "user:carol", "auth.login"))
            .await
            .unwrap();
        let young = s
            .append_audit(&event(now - 10 * DAY, "user:alice", "auth.logout"))
            .await
            .unwrap();
        let fresh_event = s
            .append_audit(&event(now - 3_600_000, "user:dave", "auth.login"))
            .await
            .unwrap();
        ended_session(s, "old-ended", now - 100 * DAY).await;
        ended_session(s, "young-ended", now - 10 * DAY).await;
        // Created long ago but never ended: kept.
        let mut open = session("old-open", "alice", "agent-1", 0);
        open.created_at = now - 100 * DAY;
        create_session(s, &open).await;

        // Batches of two: the three old events go in two batches, each recorded.
        let totals = purge(s, now, thirty_days, 2).await.unwrap();
        assert_eq!(
            (totals.events, totals.sessions, totals.batches, totals.busy),
            (3, 1, 2, false),
            "{backend:?}"
        );
        let left: Vec<i64> = s
            .audit(&AuditFilter::default(), None, 100)
            .await
            .unwrap()
            .iter()
            .filter(|e| !matches!(e.event.kind.as_str(), "audit.purged" | "connect"))
            .map(|e| e.id)
            .collect();
        // (The sessions' own `connect` events are young: kept.)
        assert_eq!(left, vec![fresh_event, young], "{backend:?}");
        assert!(s.session("old-ended").await.unwrap().is_none());
        assert!(s.session("young-ended").await.unwrap().is_some());
        assert!(s.session("old-open").await.unwrap().is_some());

        // The purge is audited, and its checkpoints chain what each batch removed.
        let purged = s
            .audit(
                &AuditFilter {
                    kind: Some("audit.purged".into()),
                    ..Default::default()
                },
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(purged.len(), 2, "{backend:?}");
        assert!(
            purged
                .iter()
                .all(|e| e.event.actor == PURGE_ACTOR && e.event.at == now)
        );
        let details: Vec<serde_json::Value> = purged
            .iter()
            .rev()
            .map(|e| serde_json::from_str(&e.event.detail).unwrap())
            .collect();
        assert_eq!(details[0]["events"], 2);
        assert_eq!(details[0]["sessions"], 1);
        assert_eq!(details[0]["first_id"], old_a);
        assert_eq!(details[0]["last_id"], old_b);
        assert_eq!(details[1]["events"], 1);
        assert_eq!(details[1]["first_id"], old_c);
        let checkpoints = s.purge_checkpoints().await.unwrap();
        assert_eq!(checkpoints.len(), 2);
        assert_eq!(checkpoints[0].batch.ids, Some((old_a, old_b)));
        assert_eq!(
            checkpoints[0].batch.times,
            Some((now - 100 * DAY, now - 40 * DAY))
        );
        assert_eq!(checkpoints[1].batch.events, 1);
        assert_eq!(details[1]["digest"], checkpoints[1].batch.digest.as_str());
        assert_ne!(checkpoints[0].batch.digest, checkpoints[1].batch.digest);
        assert_eq!(checkpoints[0].batch.digest.len(), 64);

        // Nothing more to do: no new checkpoint, no new event.
        let again = purge(s, now, thirty_days, 2).await.unwrap();
        assert_eq!(again.batches, 0);
        assert_eq!(s.purge_checkpoints().await.unwrap().len(), 2);

        // Young rows stay append-only; so do the checkpoints.
        for sql in [
            "UPDATE audit_events SET actor = 'user:mallory'",
            "DELETE FROM audit_events",
            "UPDATE audit_purges SET events = 0",
            "DELETE FROM audit_purges",
        ] {
            let refused = sqlx::query(sql).execute(s.pool()).await;
            assert!(
                refused.unwrap_err().to_string().contains("append-only"),
                "{backend:?}: {sql}"
            );
        }
        // Even with the cutoff raised by hand, nothing can be deleted outside a purge, and
        // the cutoff can neither reach the last 12 hours nor move back.
        let raise = sqlx::query("UPDATE audit_retention SET cutoff_ms = $1")
            .bind(now - 2 * DAY)
            .execute(s.pool())
            .await;
        assert!(raise.is_ok(), "{backend:?}: {raise:?}");
        let delete = sqlx::query("DELETE FROM audit_events WHERE id = $1")
            .bind(young)
            .execute(s.pool())
            .await;
        assert!(delete.unwrap_err().to_string().contains("append-only"));
        let recent = sqlx::query("UPDATE audit_retention SET cutoff_ms = $1")
            .bind(now)
            .execute(s.pool())
            .await;
        assert!(
            recent.unwrap_err().to_string().contains("12 hours"),
            "{backend:?}"
        );
        let back = sqlx::query("UPDATE audit_retention SET cutoff_ms = 0")
            .execute(s.pool())
            .await;
        assert!(
            back.unwrap_err().to_string().contains("forward"),
            "{backend:?}"
        );
        // A purge asked for a recent cutoff is refused by the database itself.
        assert!(
            purge(s, now, std::time::Duration::from_secs(3600), 2)
                .await
                .is_err()
        );
        // The two young events, the two purges' and the three sessions' `connect` events.
        assert_eq!(
            s.audit(&AuditFilter::default(), None, 100)
                .await
                .unwrap()
                .len(),
            7,
            "{backend:?}"
        );
        fresh.drop_now().await;
    }
}
