//! Every test runs against both backends: a fresh SQLite file, and a fresh schema in the
//! PostgreSQL at `DATABASE_URL` (default: the machine's, `postgresql://postgres@127.0.0.1:5432/test`).
//! An unreachable PostgreSQL fails the test: it is never skipped.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

const DEFAULT_DATABASE_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// A store on a fresh database of `backend`, and what to drop afterwards.
struct Fresh {
    store: Store,
    /// The URL the store was opened with, to open it again.
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Schema {
        admin: sqlx::AnyPool,
        schema: String,
    },
}

impl Fresh {
    async fn new(backend: Backend) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}_{n}", std::process::id());
        match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("bamf-store-{tag}.db"));
                let _ = std::fs::remove_file(&path);
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let store = Store::connect(&url).await.expect("SQLite store");
                Self {
                    store,
                    url,
                    cleanup: Cleanup::File(path),
                }
            }
            Backend::Postgres => {
                sqlx::any::install_default_drivers();
                let url = std::env::var("DATABASE_URL")
                    .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
                let admin = sqlx::AnyPool::connect(&url).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL is not reachable at {url} ({e}): run scripts/test, which starts one, or set DATABASE_URL")
                });
                let schema = format!("bamf_test_{tag}");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&admin)
                    .await
                    .expect("create schema");
                let sep = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
                let store = Store::connect(&url).await.expect("PostgreSQL store");
                Self {
                    store,
                    url,
                    cleanup: Cleanup::Schema { admin, schema },
                }
            }
        }
    }

    async fn drop_now(self) {
        self.store.close().await;
        match self.cleanup {
            Cleanup::File(path) => {
                // With the write-ahead log's companions.
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Cleanup::Schema { admin, schema } => {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&admin)
                    .await;
            }
        }
    }
}

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

#[tokio::test]
async fn both_backends_migrate_and_answer() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        assert_eq!(fresh.store.backend(), backend);
        fresh.store.ping().await.unwrap();
        // Opening the same database again finds its migrations applied and keeps its data.
        fresh
            .store
            .append_audit(&event(7, "user:alice", "auth.login"))
            .await
            .unwrap();
        let again = Store::connect(&fresh.url).await.expect("reopen");
        let kept = again
            .audit(&AuditFilter::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(kept.len(), 1, "{backend:?}");
        again.close().await;
        fresh.drop_now().await;
    }
    assert!(matches!(
        Store::connect("mysql://x").await,
        Err(StoreError::Scheme)
    ));
}

#[tokio::test]
async fn the_first_ca_saved_wins() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        assert_eq!(fresh.store.ca().await.unwrap(), None);
        let first = StoredCa {
            cert_pem: "cert-1".into(),
            key_pem: "key-1".into(),
            key_encrypted: false,
        };
        let second = StoredCa {
            cert_pem: "cert-2".into(),
            key_pem: "key-2".into(),
            key_encrypted: true,
        };
        assert_eq!(
            fresh.store.save_ca_if_absent(&first, 1).await.unwrap(),
            first
        );
        assert_eq!(
            fresh.store.save_ca_if_absent(&second, 2).await.unwrap(),
            first,
            "{backend:?}"
        );
        assert!(
            !format!("{first:?}").contains("key-1"),
            "Debug never prints the key"
        );
        fresh.drop_now().await;
    }
}

fn event(at: i64, actor: &str, kind: &str) -> NewAuditEvent {
    NewAuditEvent {
        at,
        actor: actor.into(),
        kind: kind.into(),
        outcome: "allowed".into(),
        detail: "{}".into(),
    }
}

#[tokio::test]
async fn audit_pages_newest_first_with_filters_and_a_cursor() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        for i in 0..25 {
            let actor = if i % 2 == 0 { "user:alice" } else { "user:bob" };
            let kind = if i % 5 == 0 { "auth.login" } else { "connect" };
            s.append_audit(&event(1000 + i, actor, kind)).await.unwrap();
        }
        // Pages of 10 walk all 25 newest first, without overlap.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = s.audit(&AuditFilter::default(), cursor, 10).await.unwrap();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(|e| e.id);
            seen.extend(page.into_iter().map(|e| e.event.at));
        }
        assert_eq!(seen, (1000..1025).rev().collect::<Vec<_>>(), "{backend:?}");
        let alice = AuditFilter {
            actor: Some("user:alice".into()),
            ..AuditFilter::default()
        };
        assert_eq!(s.audit(&alice, None, 100).await.unwrap().len(), 13);
        let logins = AuditFilter {
            kind: Some("auth.login".into()),
            since: Some(1005),
            until: Some(1020),
            ..AuditFilter::default()
        };
        let at: Vec<i64> = s
            .audit(&logins, None, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.event.at)
            .collect();
        assert_eq!(at, vec![1015, 1010, 1005]);
        fresh.drop_now().await;
    }
}

#[tokio::test]
async fn audit_events_cannot_be_changed_or_deleted() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let id = fresh
            .store
            .append_audit(&event(1, "user:alice", "auth.login"))
            .await
            .unwrap();
        let update = sqlx::query("UPDATE audit_events SET actor = 'user:mallory' WHERE id = $1")
            .bind(id)
            .execute(fresh.store.pool())
            .await;
        assert!(
            update.unwrap_err().to_string().contains("append-only"),
            "{backend:?}"
        );
        let delete = sqlx::query("DELETE FROM audit_events")
            .execute(fresh.store.pool())
            .await;
        assert!(
            delete.unwrap_err().to_string().contains("append-only"),
            "{backend:?}"
        );
        assert_eq!(
            fresh
                .store
                .audit(&AuditFilter::default(), None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        fresh.drop_now().await;
    }
}

#[tokio::test]
async fn users_and_their_roles() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        assert_eq!(s.count_users().await.unwrap(), 0);
        assert!(s.create_user("alice", "$argon2id$x", 1).await.unwrap());
        assert!(
            !s.create_user("alice", "$argon2id$y", 2).await.unwrap(),
            "names are unique"
        );
        assert_eq!(
            s.password_hash("alice").await.unwrap().as_deref(),
            Some("$argon2id$x")
        );
        assert_eq!(s.password_hash("bob").await.unwrap(), None);
        s.bind_role("alice", "admin").await.unwrap();
        s.bind_role("alice", "admin").await.unwrap();
        s.bind_role("alice", "everyone").await.unwrap();
        assert_eq!(s.user_roles("alice").await.unwrap(), ["admin", "everyone"]);
        assert!(
            s.bind_role("alice", "no-such-role").await.is_err(),
            "{backend:?}: foreign key"
        );
        fresh.drop_now().await;
    }
}

#[tokio::test]
async fn join_tokens_are_used_atomically_and_refused_when_spent_expired_or_revoked() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        let token = |id: &str, kind, expires_at, max_uses| JoinToken {
            id: id.into(),
            kind,
            expires_at,
            max_uses,
            uses: 0,
            revoked: false,
            created_by: "user:admin".into(),
            created_at: 0,
        };
        s.create_join_token(&token("t1", JoinKind::Agent, 10_000, 2), "h1")
            .await
            .unwrap();
        s.create_join_token(&token("t2", JoinKind::Agent, 100, 5), "h2")
            .await
            .unwrap();
        s.create_join_token(&token("t3", JoinKind::Bridge, 10_000, 1), "h3")
            .await
            .unwrap();
        assert_eq!(
            s.join_agent("h1", "id-a", "a", 50).await.unwrap(),
            JoinOutcome::Joined
        );
        // A taken name does not spend the token's second use.
        assert_eq!(
            s.join_agent("h1", "id-b", "a", 50).await.unwrap(),
            JoinOutcome::NameTaken
        );
        assert_eq!(
            s.join_agent("h1", "id-b", "b", 50).await.unwrap(),
            JoinOutcome::Joined
        );
        assert_eq!(
            s.join_agent("h1", "id-c", "c", 50).await.unwrap(),
            JoinOutcome::InvalidToken,
            "exhausted"
        );
        assert_eq!(
            s.join_agent("h2", "id-c", "c", 200).await.unwrap(),
            JoinOutcome::InvalidToken,
            "expired"
        );
        assert_eq!(
            s.join_agent("h3", "id-c", "c", 50).await.unwrap(),
            JoinOutcome::InvalidToken,
            "wrong kind"
        );
        assert_eq!(
            s.join_agent("nope", "id-c", "c", 50).await.unwrap(),
            JoinOutcome::InvalidToken
        );
        assert!(s.revoke_join_token("t3").await.unwrap());
        assert!(!s.revoke_join_token("t9").await.unwrap());
        assert_eq!(
            s.join_bridge("h3", 2, 50).await.unwrap(),
            JoinOutcome::InvalidToken,
            "revoked"
        );
        let listed = s.join_tokens().await.unwrap();
        let t1 = listed.iter().find(|t| t.id == "t1").unwrap();
        assert_eq!((t1.uses, t1.revoked), (2, false), "{backend:?}");
        assert!(listed.iter().find(|t| t.id == "t3").unwrap().revoked);
        fresh.drop_now().await;
    }
}

#[tokio::test]
async fn resources_belong_to_one_agent_and_go_with_it() {
    use std::collections::BTreeMap;
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        sqlx::query(
            "INSERT INTO agents (id, name, joined_at) VALUES ('a1', 'one', 1), ('a2', 'two', 1)",
        )
        .execute(s.pool())
        .await
        .unwrap();
        s.set_agent_serial("a1", "0a").await.unwrap();
        let dev: BTreeMap<String, String> = [("env".to_owned(), "dev".to_owned())].into();
        let res = |name: &str| (name.to_owned(), "ssh".to_owned(), dev.clone());
        assert!(
            s.replace_resources("a1", &[res("web"), res("db")], 5)
                .await
                .unwrap()
                .is_empty()
        );
        // Another agent cannot take a name in use; its other resources are kept.
        let taken = s
            .replace_resources("a2", &[res("web"), res("cache")], 6)
            .await
            .unwrap();
        assert_eq!(taken, ["web"], "{backend:?}");
        let listed: Vec<(String, String)> = s
            .resources()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.name, r.agent_name))
            .collect();
        assert_eq!(
            listed,
            [
                ("cache".into(), "two".into()),
                ("db".into(), "one".into()),
                ("web".into(), "one".into())
            ]
        );
        assert_eq!(s.resources().await.unwrap()[1].labels, dev);
        // One by name, as the setup path reads it.
        let db = s.resource("db").await.unwrap().unwrap();
        assert_eq!(
            (db.agent_id.as_str(), db.agent_name.as_str()),
            ("a1", "one")
        );
        assert_eq!(db.labels, dev);
        assert!(s.resource("nothing").await.unwrap().is_none());
        // A new catalog replaces the old one.
        s.replace_resources("a1", &[res("db")], 7).await.unwrap();
        assert_eq!(s.resources().await.unwrap().len(), 2);
        // The setup path's check: whether the agent's current certificate is revoked.
        assert_eq!(s.agent_revoked("a1").await.unwrap(), Some(false));
        assert_eq!(
            s.agent_revoked("a2").await.unwrap(),
            Some(false),
            "no serial"
        );
        assert_eq!(s.agent_revoked("nobody").await.unwrap(), None);
        let serial_0a = CertificateRef {
            serial: Some("0a".into()),
            fingerprint: None,
        };
        s.revoke(&serial_0a, "lost", "user:admin", 7).await.unwrap();
        assert_eq!(
            s.agent_revoked("a1").await.unwrap(),
            Some(true),
            "{backend:?}"
        );
        // Deleting the agent takes its resources and revokes its last certificate.
        let deleted = s
            .delete_agent("a1", "user:admin", 8)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(deleted.last_seen_at, Some(7));
        assert!(
            s.delete_agent("a1", "user:admin", 8)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(s.resources().await.unwrap().len(), 1);
        let by_serial = CertificateRef {
            serial: Some("0a".into()),
            fingerprint: None,
        };
        assert!(s.is_revoked(&by_serial).await.unwrap());
        assert!(
            !s.revoke(&by_serial, "again", "user:admin", 9)
                .await
                .unwrap()
                .added
        );
        let by_fp = CertificateRef {
            serial: None,
            fingerprint: Some("ff".into()),
        };
        assert!(!s.is_revoked(&by_fp).await.unwrap());
        assert!(
            s.revoke(&by_fp, "lost", "user:admin", 9)
                .await
                .unwrap()
                .added
        );
        // A check naming both matches either.
        let both = CertificateRef {
            serial: Some("0b".into()),
            fingerprint: Some("ff".into()),
        };
        assert!(s.is_revoked(&both).await.unwrap());
        assert_eq!(s.revocations().await.unwrap().len(), 2);
        fresh.drop_now().await;
    }
}

#[tokio::test]
async fn roles_are_created_changed_and_deleted_except_builtins() {
    use crate::rbac::Rules;
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        let rules = Rules::from_json(r#"{"allow":[{"names":["web-*"]}]}"#).unwrap();
        assert!(s.create_role("web", &rules, 1).await.unwrap());
        assert!(!s.create_role("web", &rules, 1).await.unwrap());
        s.create_user("alice", "h", 1).await.unwrap();
        s.bind_role("alice", "web").await.unwrap();
        let names = |roles: Vec<Role>| roles.into_iter().map(|r| r.name).collect::<Vec<_>>();
        // The roles a signed-in request of alice's carries: `everyone` and those bound.
        s.put_token("alice-token", "alice", 1_000, 1).await.unwrap();
        let roles = || async {
            let (name, roles) = s.token_principal("alice-token", 2).await.unwrap().unwrap();
            assert_eq!(name, "alice");
            roles
        };
        assert_eq!(names(roles().await), ["everyone", "web"], "{backend:?}");
        assert_eq!(roles().await[1].rules, rules);
        assert_eq!(
            s.update_role("admin", &rules).await.unwrap(),
            RoleChange::Builtin
        );
        assert_eq!(
            s.update_role("nope", &rules).await.unwrap(),
            RoleChange::Missing
        );
        assert_eq!(
            s.update_role("everyone", &rules).await.unwrap(),
            RoleChange::Done
        );
        assert_eq!(
            s.delete_role("everyone").await.unwrap(),
            RoleChange::Builtin
        );
        assert_eq!(s.delete_role("web").await.unwrap(), RoleChange::Done);
        assert_eq!(names(roles().await), ["everyone"]);
        assert_eq!(s.users().await.unwrap()[0].roles, Vec::<String>::new());
        assert!(
            s.delete_user("alice", "user:admin", 9)
                .await
                .unwrap()
                .is_some()
        );
        assert!(!s.user_enabled("alice").await.unwrap());
        fresh.drop_now().await;
    }
}

/// Creates `session` as `POST /connect` does: with its records ([`connect_records`]) in the
/// same transaction.
async fn create_session(s: &Store, session: &Session) {
    let (certificate, allowed) = connect_records(session);
    s.create_session(session, &certificate, &allowed)
        .await
        .unwrap();
}

/// What `POST /connect` writes with `session`: its certificate (serial `s-<id>`) and the
/// audit event (now) that allowed it.
fn connect_records(session: &Session) -> (NewCertificate, NewAuditEvent) {
    let certificate = NewCertificate {
        serial: format!("s-{}", session.id),
        fingerprint: format!("fp-s-{}", session.id),
        subject: CertificateSubject::Session(session.id.clone()),
        issued_at: session.created_at,
        expires_at: session.created_at + 60_000,
    };
    let mut allowed = event(
        crate::now_ms(),
        &format!("user:{}", session.user),
        "connect",
    );
    allowed.detail = serde_json::json!({"session": session.id}).to_string();
    (certificate, allowed)
}

fn session(id: &str, user: &str, agent: &str, bridge: u32) -> Session {
    Session {
        id: id.into(),
        user: user.into(),
        resource: "db".into(),
        agent_id: agent.into(),
        bridge,
        state: "pending".into(),
        created_at: 1,
        started_at: None,
        ended_at: None,
        bytes_up: 0,
        bytes_down: 0,
        end_reason: None,
        client_key: None,
        bridges: vec![bridge],
        reattaches: 0,
        detached_at: None,
    }
}

/// API tokens are durable, expire, end at logout and at a password reset, and are bound to
/// the user's id: a user deleted and created again under the same name does not get them.
#[tokio::test]
async fn tokens_are_bound_to_the_user_not_the_name() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        let user = |token: &'static str, now: i64| async move {
            s.token_principal(token, now)
                .await
                .unwrap()
                .map(|(name, _)| name)
        };
        s.create_user("bob", "h", 1).await.unwrap();
        assert!(s.put_token("t1", "bob", 1_000, 10).await.unwrap());
        assert!(s.put_token("t2", "bob", 1_000, 10).await.unwrap());
        assert!(!s.put_token("t3", "nobody", 1_000, 10).await.unwrap());
        assert_eq!(user("t1", 20).await.as_deref(), Some("bob"));
        assert_eq!(user("t1", 1_000).await, None, "expired");
        assert_eq!(user("t3", 20).await, None);
        s.delete_token("t1").await.unwrap();
        assert_eq!(user("t1", 20).await, None, "logged out");
        // A new password ends every token.
        assert!(s.set_password_hash("bob", "h2").await.unwrap());
        assert_eq!(user("t2", 20).await, None, "{backend:?}: reset");
        // Deleted and created again: the old token does not come back.
        assert!(s.put_token("t4", "bob", 1_000, 10).await.unwrap());
        assert!(
            s.delete_user("bob", "user:admin", 30)
                .await
                .unwrap()
                .is_some()
        );
        s.create_user("bob", "h", 31).await.unwrap();
        assert_eq!(user("t4", 40).await, None, "{backend:?}: resurrected");
        // Each user keeps a bounded number of tokens.
        for n in 0..super::tokens::MAX_TOKENS_PER_USER + 5 {
            s.put_token(&format!("many-{n}"), "bob", 10_000, 50 + n)
                .await
                .unwrap();
        }
        let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(kept, super::tokens::MAX_TOKENS_PER_USER);
        assert!(user("many-0", 60).await.is_none(), "oldest went");
        fresh.drop_now().await;
    }
}

/// A session, its certificate and the audit event that allowed it are written together or
/// not at all.
#[tokio::test]
async fn a_session_its_certificate_and_its_audit_event_commit_together() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        create_session(s, &session("s1", "bob", "a1", 0)).await;
        assert!(s.session("s1").await.unwrap().is_some());
        let by_serial = CertificateRef {
            serial: Some("s-s1".into()),
            fingerprint: None,
        };
        let revoked = s
            .revoke(&by_serial, "test", "user:admin", 10)
            .await
            .unwrap();
        assert_eq!(
            revoked.kind.as_deref(),
            Some("client"),
            "certificate recorded"
        );
        assert_eq!(revoked.ended_sessions, vec!["s1".to_owned()]);
        let events = s.audit(&AuditFilter::default(), None, 100).await.unwrap();
        assert!(
            events.iter().any(|e| e.event.detail.contains("\"s1\"")),
            "audit event written: {events:?}"
        );

        // The certificate's serial is taken: nothing of the second session is kept.
        let second = session("s2", "bob", "a1", 0);
        let (mut certificate, allowed) = connect_records(&second);
        certificate.serial = "s-s1".into();
        let before = s
            .audit(&AuditFilter::default(), None, 100)
            .await
            .unwrap()
            .len();
        assert!(
            s.create_session(&second, &certificate, &allowed)
                .await
                .is_err()
        );
        assert!(s.session("s2").await.unwrap().is_none(), "no session row");
        let after = s
            .audit(&AuditFilter::default(), None, 100)
            .await
            .unwrap()
            .len();
        assert_eq!(before, after, "no audit event");
        fresh.drop_now().await;
    }
}

/// Revoking a recorded certificate by serial or by fingerprint ends what derives from it: a
/// session certificate its session, a user certificate the user's tokens and sessions, an
/// agent certificate the agent's sessions; deleting a user revokes their certificates.
#[tokio::test]
async fn revocation_ends_everything_derived_from_the_certificate() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        let admin = "user:admin";
        s.create_user("bob", "h", 1).await.unwrap();
        s.create_user("carol", "h", 1).await.unwrap();
        for (id, user, agent) in [
            ("s1", "bob", "a1"),
            ("s2", "bob", "a1"),
            ("s3", "carol", "a1"),
            ("s4", "carol", "a2"),
            ("s5", "carol", "a2"),
        ] {
            create_session(s, &session(id, user, agent, 0)).await;
        }
        let record = |serial: &'static str, subject: CertificateSubject| async move {
            s.record_certificate(&NewCertificate {
                serial: serial.into(),
                fingerprint: format!("fp{serial}"),
                subject,
                issued_at: 1,
                expires_at: 100_000,
            })
            .await
            .unwrap();
        };
        record("01", CertificateSubject::Session("s5".into())).await;
        record("02", CertificateSubject::User("bob".into())).await;
        record("03", CertificateSubject::Agent("a2".into())).await;
        record("04", CertificateSubject::User("carol".into())).await;
        s.put_token("bob-token", "bob", 100_000, 1).await.unwrap();
        let by_fp = |fp: &str| CertificateRef {
            serial: None,
            fingerprint: Some(fp.into()),
        };
        let by_serial = |serial: &str| CertificateRef {
            serial: Some(serial.into()),
            fingerprint: None,
        };
        // A session certificate, by fingerprint: its session ends; revoked by serial too.
        let r = s.revoke(&by_fp("fp01"), "lost", admin, 5).await.unwrap();
        assert_eq!((r.added, r.kind.as_deref()), (true, Some("client")));
        assert_eq!(r.ended_sessions, ["s5"]);
        assert!(s.is_revoked(&by_serial("01")).await.unwrap(), "{backend:?}");
        assert_eq!(
            s.session("s5")
                .await
                .unwrap()
                .unwrap()
                .end_reason
                .as_deref(),
            Some("revoked")
        );
        // A user certificate, by serial: the user's tokens and sessions end.
        let r = s
            .revoke(&by_serial("02"), "stolen", admin, 6)
            .await
            .unwrap();
        assert_eq!(r.kind.as_deref(), Some("user"));
        assert_eq!(r.ended_tokens, 1);
        let mut ended = r.ended_sessions.clone();
        ended.sort();
        assert_eq!(ended, ["s1", "s2"]);
        assert!(s.token_principal("bob-token", 7).await.unwrap().is_none());
        // An agent certificate, by fingerprint: the agent's sessions end.
        let r = s
            .revoke(&by_fp("fp03"), "host lost", admin, 7)
            .await
            .unwrap();
        assert_eq!(r.ended_sessions, ["s4"]);
        assert!(s.is_revoked(&by_serial("03")).await.unwrap());
        // Deleting a user revokes their unexpired certificates and ends their sessions.
        let ended = s.delete_user("carol", admin, 8).await.unwrap().unwrap();
        assert_eq!(ended, ["s3"]);
        assert!(s.is_revoked(&by_fp("fp04")).await.unwrap(), "{backend:?}");
        // Sessions that ended before pairing are listed for their bridge to refuse.
        let mut refused = s.ended_unpaired(0, 5).await.unwrap();
        refused.sort();
        assert_eq!(refused, ["s1", "s2", "s3", "s4", "s5"]);
        assert!(s.ended_unpaired(1, 0).await.unwrap().is_empty());
        assert!(s.ended_unpaired(0, 9).await.unwrap().is_empty());
        fresh.drop_now().await;
    }
}

/// What the API asks every second reads only what it needs: a bridge's heartbeat the recently
/// ended sessions on it, in index order (not every session it ever ended, sorted); the sweep
/// for silent bridges the open sessions (not the whole table). SQLite plans without
/// statistics, as a new database does; PostgreSQL chooses by its statistics.
#[tokio::test]
async fn what_runs_every_second_reads_only_what_it_needs() {
    let fresh = Fresh::new(Backend::Sqlite).await;
    for (query, index, binds) in [
        (
            super::sessions::ENDED_ON_BRIDGE,
            "sessions_ended_by_bridge",
            2,
        ),
        (
            super::sessions::OPEN_ON_SILENT_BRIDGES,
            "sessions_open_by_bridge",
            1,
        ),
    ] {
        let mut explain = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {query}")));
        for _ in 0..binds {
            explain = explain.bind(0_i64);
        }
        let plan: Vec<String> = explain
            .fetch_all(fresh.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| sqlx::Row::try_get::<String, _>(r, 3).unwrap())
            .collect();
        let plan = plan.join("; ");
        assert!(plan.contains(index), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
    fresh.drop_now().await;
}

#[test]
fn the_builtin_rules_parse() {
    for migration in [
        include_str!("../../migrations/postgres/0002_builtin_roles.sql"),
        include_str!("../../migrations/sqlite/0002_builtin_roles.sql"),
    ] {
        for json in migration.split('\'').filter(|s| s.starts_with('{')) {
            crate::rbac::Rules::from_json(json).expect("builtin rules parse");
        }
    }
}

mod retention;

#[tokio::test]
async fn sso_users_are_found_by_subject_and_their_roles_follow_the_claims() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        for role in ["ops-role", "dev-role", "kept"] {
            s.create_role(role, &crate::rbac::Rules::default(), 1)
                .await
                .unwrap();
        }
        assert!(s.create_user("admin", "hash", 1).await.unwrap());
        let roles = |r: &[&str]| r.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        // First sign-in: a user, bound to the roles that exist.
        let first = s
            .sso_sign_in(
                "idp",
                "sub-1",
                "alice",
                &roles(&["ops-role", "missing"]),
                10,
            )
            .await
            .unwrap();
        assert_eq!(
            first,
            SsoSignIn::User {
                name: "alice".into(),
                created: true,
                roles: roles(&["ops-role"])
            },
            "{backend:?}"
        );
        assert_eq!(
            s.password_hash("alice").await.unwrap().as_deref(),
            Some(NO_PASSWORD)
        );
        // An administrator's binding stays; the provider's are replaced at each sign-in.
        s.bind_role("alice", "kept").await.unwrap();
        let again = s
            .sso_sign_in("idp", "sub-1", "renamed-at-idp", &roles(&["dev-role"]), 20)
            .await
            .unwrap();
        assert_eq!(
            again,
            SsoSignIn::User {
                name: "alice".into(),
                created: false,
                roles: roles(&["dev-role"])
            }
        );
        assert_eq!(s.user_roles("alice").await.unwrap(), ["dev-role", "kept"]);
        s.sso_sign_in("idp", "sub-1", "alice", &[], 30)
            .await
            .unwrap();
        assert_eq!(s.user_roles("alice").await.unwrap(), ["kept"]);
        // A provider cannot take over a user by asserting their name.
        assert_eq!(
            s.sso_sign_in("idp", "sub-2", "admin", &roles(&["ops-role"]), 40)
                .await
                .unwrap(),
            SsoSignIn::NameTaken
        );
        assert_eq!(
            s.sso_sign_in("other-idp", "sub-1", "alice", &[], 40)
                .await
                .unwrap(),
            SsoSignIn::NameTaken
        );
        // Deleting the user forgets the link: the next sign-in starts a new user.
        s.delete_user("alice", "test", 50).await.unwrap();
        let fresh_user = s
            .sso_sign_in("idp", "sub-1", "alice", &[], 60)
            .await
            .unwrap();
        assert!(matches!(fresh_user, SsoSignIn::User { created: true, .. }));
        fresh.drop_now().await;
    }
}

/// A bridge's batch of reports applies as if one by one: a session that ended and started
/// again on the same bridge within one batch is attached; a start from a bridge that is not
/// the session's, or for an unknown session, is not applied and not audited; an end from a
/// bridge the session went through before adds its bytes but does not detach it; an end
/// whose reason ends the session ends it. Then the agent's accounts replace the bytes and
/// end the sessions of its own only.
#[tokio::test]
async fn a_batch_of_reports_applies_in_each_sessions_own_order() {
    for backend in BACKENDS {
        let fresh = Fresh::new(backend).await;
        let s = &fresh.store;
        for (id, bridge) in [("s1", 0), ("s2", 0), ("s3", 1), ("s4", 0)] {
            create_session(s, &session(id, "bob", "a1", bridge)).await;
        }
        assert!(s.reattach_session("s4", 1).await.unwrap());
        let ended = |at: i64, up: i64, reason: &str| Report::Ended {
            started_at: Some(10),
            at,
            bytes_up: up,
            bytes_down: 2 * up,
            reason: reason.into(),
        };
        let reports: Vec<(String, Report, NewAuditEvent)> = [
            ("s1", Report::Started { at: 10 }),
            ("s2", Report::Started { at: 11 }),
            ("s1", ended(20, 5, "client_closed")),
            ("s1", Report::Started { at: 30 }),
            ("s3", Report::Started { at: 12 }),
            ("s2", ended(21, 7, "killed")),
            ("nobody", Report::Started { at: 13 }),
            ("s4", ended(22, 3, "client_closed")),
        ]
        .into_iter()
        .enumerate()
        .map(|(n, (id, report))| {
            let kind = format!("report-{n}");
            (id.to_owned(), report, event(100, "bridge:0", &kind))
        })
        .collect();
        let applied = s.apply_reports(0, &reports).await.unwrap();
        assert_eq!(
            applied,
            [true, true, true, true, false, true, false, true],
            "{backend:?}"
        );

        let s1 = s.session("s1").await.unwrap().unwrap();
        assert_eq!(
            (s1.state.as_str(), s1.started_at, s1.detached_at),
            ("active", Some(10), None),
            "{backend:?}: ended, then attached again"
        );
        assert_eq!((s1.bytes_up, s1.bytes_down, s1.end_reason), (5, 10, None));
        let s2 = s.session("s2").await.unwrap().unwrap();
        assert_eq!(
            (s2.state.as_str(), s2.ended_at, s2.end_reason.as_deref()),
            ("ended", Some(21), Some("killed"))
        );
        let s3 = s.session("s3").await.unwrap().unwrap();
        assert_eq!((s3.state.as_str(), s3.started_at), ("pending", None));
        let s4 = s.session("s4").await.unwrap().unwrap();
        assert_eq!(
            (s4.state.as_str(), s4.detached_at, s4.bytes_up),
            ("pending", None, 3),
            "{backend:?}: an earlier bridge's end counts bytes, does not detach"
        );
        // Only what applied is audited, in the batch's order.
        let kinds: Vec<String> = s
            .audit(&AuditFilter::default(), None, 100)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .filter(|e| e.event.kind.starts_with("report-"))
            .map(|e| e.event.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "report-0", "report-1", "report-2", "report-3", "report-5", "report-7"
            ]
        );

        // The agent's accounts: its own sessions only; its bytes replace the bridges'.
        let end = |id: &str| AgentEnd {
            session: id.into(),
            reason: "closed".into(),
            bytes_up: 50,
            bytes_down: 60,
        };
        let ends = [
            (end("s1"), event(200, "agent:a1", "end-s1")),
            (end("nobody"), event(200, "agent:a1", "end-nobody")),
        ];
        let applied = s.end_sessions_by_agent("a1", &ends, 300).await.unwrap();
        assert_eq!(applied, [true, false]);
        let theirs = [(end("s3"), event(200, "agent:a2", "end-s3"))];
        assert_eq!(
            s.end_sessions_by_agent("a2", &theirs, 300).await.unwrap(),
            [false],
            "another agent's session"
        );
        let s1 = s.session("s1").await.unwrap().unwrap();
        assert_eq!(
            (s1.state.as_str(), s1.ended_at, s1.bytes_up, s1.bytes_down),
            ("ended", Some(300), 50, 60)
        );
        assert_eq!(s1.end_reason.as_deref(), Some("closed"));
        // A bridge's later end no longer adds to the agent's count.
        let late = [(
            "s1".to_owned(),
            ended(310, 9, "client_closed"),
            event(310, "bridge:0", "late"),
        )];
        assert_eq!(s.apply_reports(0, &late).await.unwrap(), [true]);
        assert_eq!(s.session("s1").await.unwrap().unwrap().bytes_up, 50);
        let audited: Vec<String> = s
            .audit(&AuditFilter::default(), None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.kind)
            .filter(|k| k.starts_with("end-"))
            .collect();
        assert_eq!(audited, ["end-s1"]);
        fresh.drop_now().await;
    }
}
