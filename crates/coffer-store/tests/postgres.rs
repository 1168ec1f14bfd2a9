//! The PostgreSQL backend against a real server: the conformance suite, migrations, the
//! errors at connection time, and UID/MODSEQ allocation across several stores ("nodes").
//!
//! The server is named by COFFER_TEST_POSTGRES_URL (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; scripts/test makes sure one runs). Each
//! test creates a database of its own and drops it afterwards. These tests fail, never
//! skip, when the server cannot be reached.

use coffer_store::conformance;
use coffer_store::postgres::{PgStore, SCHEMA_VERSION, redact_url};
use coffer_store::*;
use coffer_types::*;
use std::collections::HashSet;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("COFFER_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// `url` naming database `db` instead (URL form only).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..host_end])
}

async fn admin() -> tokio_postgres::Client {
    let url = admin_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} cannot be reached: {e}{}. Start it (scripts/test does) or \
                 set COFFER_TEST_POSTGRES_URL",
                redact_url(&url),
                std::error::Error::source(&e)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            )
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh database, dropped (with its connections) when the test ends.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("coffer_test_{:016x}", rand::random::<u64>());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        let url = with_database(&admin_url(), &name);
        TestDb { name, url }
    }

    async fn drop_db(self) {
        admin()
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap_or_else(|e| panic!("dropping database {}: {e}", self.name));
    }

    async fn sql(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backend_passes_the_conformance_suite() {
    let db = TestDb::new().await;
    let store = PgStore::connect(&db.url).await.expect("connect");
    conformance::run_all(&store).await;
    drop(store);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_is_versioned_and_a_newer_one_is_refused() {
    let db = TestDb::new().await;
    drop(
        PgStore::connect(&db.url)
            .await
            .expect("first connect creates"),
    );
    // Connecting again (a second node, a restart) finds the schema and changes nothing.
    let again = PgStore::connect(&db.url).await.expect("second connect");
    again.set_meta("k", b"v").await.unwrap();
    drop(again);
    let sql = db.sql().await;
    let v: i64 = sql
        .query_one("SELECT version FROM coffer_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, i64::from(SCHEMA_VERSION));
    sql.execute(
        "UPDATE coffer_schema SET version = $1",
        &[&(i64::from(SCHEMA_VERSION) + 1)],
    )
    .await
    .unwrap();
    match PgStore::connect(&db.url).await {
        Err(StoreError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        Err(e) => panic!("expected SchemaTooNew, got {e}"),
        Ok(_) => panic!("expected SchemaTooNew, got a store"),
    }
    drop(sql);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_is_named_without_its_password() {
    // Nothing listens on port 1.
    let url = "postgres://coffer:hunter2@127.0.0.1:1/coffer";
    let err = match PgStore::connect(url).await {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{msg}");
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(msg.contains("coffer:***@"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("refused"), "the cause is given: {msg}");
}

fn message(seal: SealRef) -> NewMessage {
    NewMessage {
        msg_id: MsgId(rand::random()),
        blob_id: BlobId(rand::random()),
        blob_len: 11,
        seal,
        sealed_meta: vec![7; 50],
        sealed_flags: None,
    }
}

/// Several stores with pools of their own stand for several nodes: concurrent appends,
/// flag changes and expunges to one mailbox never share a UID, MODSEQs strictly grow, and
/// each node's data_version moves when another node commits.
#[tokio::test(flavor = "multi_thread")]
async fn several_nodes_allocate_uids_and_modseqs_correctly() {
    let db = TestDb::new().await;
    let nodes: Vec<PgStore> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(PgStore::connect_with_pool_size(&db.url, 4).await.unwrap());
        }
        v
    };
    let u = UserId([42; 32]);
    let boxes = nodes[0]
        .create_account(NewAccount {
            account: AccountRow {
                user_id: u,
                sealed_name: vec![1],
                generation: Generation(1),
                mode: SecurityMode::High,
                kdf_salt: [0; 16],
                inbox: None,
                created: 1,
            },
            keyring: KeyringRow {
                user_id: u,
                generation: Generation(1),
                public_key: [1; 32],
                created: 1,
            },
            slots: vec![],
            mailboxes: vec![NewMailbox {
                generation: Generation(1),
                sealed: vec![1],
                lookup: [1; 32],
                is_inbox: true,
            }],
        })
        .await
        .unwrap();
    let inbox = boxes[0].id;

    let before = nodes[1].data_version().await.unwrap();
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..15 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let batch: Vec<NewMessage> = (0..1 + (i % 3))
                    .map(|_| message(SealRef::PublicKey(Generation(1))))
                    .collect();
                for m in &batch {
                    node.put_blob(&u, &m.blob_id, b"ciphertext!".to_vec())
                        .await
                        .unwrap();
                }
                let (uids, modseq) = node.append(&u, inbox, batch).await.unwrap();
                // Interleave flag changes and expunges from the same node.
                if i % 4 == 1 {
                    node.set_flags(&u, inbox, vec![(uids[0], vec![n as u8])], None)
                        .await
                        .unwrap();
                }
                if i % 5 == 2 {
                    node.expunge(&u, inbox, vec![uids[0]]).await.unwrap();
                }
                (uids, modseq)
            }));
        }
    }
    let mut all_uids = Vec::new();
    let mut modseqs = HashSet::new();
    for t in tasks {
        let (uids, modseq) = t.await.unwrap();
        assert!(
            uids.windows(2).all(|w| w[1].get() == w[0].get() + 1),
            "consecutive UIDs within one append"
        );
        assert!(modseqs.insert(modseq.get()), "MODSEQ {modseq:?} reused");
        all_uids.extend(uids.iter().map(|u| u.get()));
    }
    let count = all_uids.len();
    all_uids.sort_unstable();
    all_uids.dedup();
    assert_eq!(all_uids.len(), count, "a UID was handed out twice");
    assert_eq!(
        all_uids,
        (1..=count as u32).collect::<Vec<_>>(),
        "no gap, no reuse"
    );
    let mb = nodes[2].get_mailbox(&u, inbox).await.unwrap().unwrap();
    assert_eq!(mb.uid_next as usize, count + 1);
    let present = nodes[2].list_messages(&u, inbox).await.unwrap();
    let expunged = nodes[2].expunged_since(&u, inbox, 0).await.unwrap();
    assert_eq!(
        present.len() + expunged.len(),
        count,
        "every message accounted for"
    );
    assert!(present.iter().all(|m| m.modseq.get() <= mb.highest_modseq));
    assert!(
        nodes[1].data_version().await.unwrap() > before,
        "data_version moved with other nodes' commits"
    );

    // A change committed through one node is seen by another's data_version.
    let v = nodes[2].data_version().await.unwrap();
    nodes[0]
        .set_flags(&u, inbox, vec![(present[0].uid, vec![9])], None)
        .await
        .unwrap();
    assert_ne!(nodes[2].data_version().await.unwrap(), v);
    // A read changes nothing.
    let v = nodes[2].data_version().await.unwrap();
    nodes[0].list_messages(&u, inbox).await.unwrap();
    assert_eq!(nodes[2].data_version().await.unwrap(), v);

    // UIDVALIDITY grows across nodes creating mailboxes at once.
    let mut creates = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..4u8 {
            let node = node.clone();
            creates.push(tokio::spawn(async move {
                node.create_mailbox(
                    &u,
                    NewMailbox {
                        generation: Generation(1),
                        sealed: vec![2],
                        lookup: [10 + i as u8 * 4 + j; 32],
                        is_inbox: false,
                    },
                )
                .await
                .unwrap()
                .uid_validity
                .get()
            }));
        }
    }
    let mut uvs = HashSet::new();
    for c in creates {
        assert!(uvs.insert(c.await.unwrap()), "UIDVALIDITY reused");
    }
    assert!(nodes[0].check().await.unwrap().is_empty());
    drop(nodes);
    db.drop_db().await;
}

/// Connections cut by the server (a restart, a failover, an operator): an operation
/// either succeeds or fails as Unavailable, and service resumes by itself.
#[tokio::test(flavor = "multi_thread")]
async fn lost_connections_are_unavailable_then_service_resumes() {
    let db = TestDb::new().await;
    let store = PgStore::connect_with_pool_size(&db.url, 2).await.unwrap();
    store.set_meta("before", b"1").await.unwrap();
    let admin = admin().await;
    for _ in 0..3 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .unwrap();
        let mut ok = false;
        for _ in 0..5 {
            match store.get_meta("before").await {
                Ok(v) => {
                    assert_eq!(v, Some(b"1".to_vec()));
                    ok = true;
                    break;
                }
                Err(StoreError::Unavailable(m)) => {
                    assert!(!m.is_empty());
                }
                Err(e) => panic!("expected Unavailable, got {e}"),
            }
        }
        assert!(ok, "service did not resume");
        store.set_meta("after", b"2").await.unwrap();
    }
    drop(store);
    db.drop_db().await;
}
