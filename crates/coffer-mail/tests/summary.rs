//! The sealed FETCH summary (ENVELOPE, BODYSTRUCTURE, BODY, "sent as stored") and the
//! streamed body: what FETCH answers without opening a body, and a large body read in
//! authenticated chunks.

mod common;

use coffer_mail::{InternalDate, MailError, MessageMeta, mime};
use coffer_store::{NewMessage, SealRef, Store};
use coffer_types::{BlobId, Flag, MailboxName, MsgId, SecurityMode};
use coffer_vault::Place;

const PW: &str = "correct horse battery";

const MULTIPART: &[u8] = b"From: \"Doe, Jane\" <jane@example.org>\r\nTo: bob@example.org\r\n\
Subject: =?UTF-8?Q?caf=C3=A9?=\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n\
Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b1\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAECAw==\r\n--b1--\r\n";

fn expected(raw: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        mime::envelope(raw),
        mime::body_structure(raw, true),
        mime::body_structure(raw, false),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn append_and_delivery_seal_a_summary_that_matches_the_body() {
    let t = common::setup();
    let s = t
        .mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let inbox = t
        .mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    let bare_lf = b"Subject: bare\n\nline one\nline two\n";
    for raw in [MULTIPART, &bare_lf[..]] {
        t.mail
            .append(&s, inbox.id, raw, &[], InternalDate::now())
            .await
            .unwrap();
    }
    let user = *s.user_id();
    coffer_mail::deliver(
        &t.store,
        t.mail.vault().pepper(),
        &user,
        None,
        MULTIPART,
        InternalDate::now(),
    )
    .await
    .unwrap();
    let msgs = t.mail.messages(&s, inbox.id).await.unwrap();
    assert_eq!(msgs.len(), 3);
    for (m, canonical) in msgs.iter().zip([true, false, true]) {
        let body = t.mail.body(&s, m).await.unwrap();
        let sum = m
            .summary
            .as_deref()
            .expect("every new message has a summary");
        let (env, bs, b) = expected(&body);
        assert_eq!(sum.envelope, env, "UID {}", m.uid);
        assert_eq!(sum.body_structure, bs);
        assert_eq!(sum.body, b);
        assert_eq!(sum.canonical, canonical, "UID {}", m.uid);
    }
    // The delivered row was resealed under the index key at that read; its summary stayed.
    let again = t.mail.messages(&s, inbox.id).await.unwrap();
    assert!(matches!(again[2].seal, SealRef::IndexKey(_)));
    assert_eq!(again[2].summary, msgs[2].summary);
    // The summary is sealed: the subject is nowhere in the database file in the clear.
    let db = std::fs::read(t.dir.join("coffer.db")).unwrap();
    let wal = std::fs::read(t.dir.join("coffer.db-wal")).unwrap_or_default();
    for hay in [db, wal] {
        assert!(
            !hay.windows(8).any(|w| w == b"Doe, Jan"),
            "envelope text at rest"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_from_before_the_summary_get_one_when_fetch_remembers_it() {
    let t = common::setup();
    let s = t
        .mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let inbox = t
        .mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    let user = *s.user_id();
    // A row as an older Coffer wrote it: metadata layout 1, no summary.
    let msg_id = MsgId(rand::random());
    let blob_id = BlobId(rand::random());
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&blob_id.0);
    v1.extend_from_slice(&(MULTIPART.len() as u64).to_be_bytes());
    v1.extend_from_slice(&1_700_000_000i64.to_be_bytes());
    v1.extend_from_slice(&0i16.to_be_bytes());
    let (g, sealed_body, sealed_meta, sealed_flags) = s
        .with(|k| {
            let (g, body) = k.seal_body(&blob_id, MULTIPART);
            let (_, meta) = k.seal(Place::MessageMeta(msg_id.as_bytes()), &v1);
            let (_, flags) = k.seal(
                Place::MessageFlags(msg_id.as_bytes()),
                &coffer_mail::codec::encode_flags(&[Flag::Seen]),
            );
            (g, body, meta, flags)
        })
        .unwrap();
    let blob_len = sealed_body.len() as u64;
    t.store
        .put_blob(&user, &blob_id, sealed_body)
        .await
        .unwrap();
    t.store
        .append(
            &user,
            inbox.id,
            vec![NewMessage {
                msg_id,
                blob_id,
                blob_len,
                seal: SealRef::IndexKey(g),
                sealed_meta,
                sealed_flags: Some(sealed_flags),
            }],
        )
        .await
        .unwrap();
    let old = t.mail.messages(&s, inbox.id).await.unwrap().remove(0);
    assert_eq!(old.summary, None, "layout 1 reads, without a summary");
    assert_eq!(old.size, MULTIPART.len() as u64);

    let summary = mime::summary(MULTIPART);
    let n = t
        .mail
        .remember_summaries(&s, vec![(old.clone(), summary.clone())])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let now = t.mail.messages(&s, inbox.id).await.unwrap().remove(0);
    assert_eq!(now.summary.as_deref(), Some(&summary));
    assert_eq!(
        (now.modseq, &now.flags, now.size, now.internal_date),
        (old.modseq, &old.flags, old.size, old.internal_date),
        "nothing a client sees changed"
    );
    // The new layout decodes to the same metadata.
    let meta = MessageMeta {
        blob_id: blob_id.0,
        size: now.size,
        internal_date: now.internal_date,
        tz_offset_minutes: now.tz_offset_minutes,
        summary: now.summary.clone(),
    };
    assert_eq!(MessageMeta::decode(&meta.encode()).unwrap(), meta);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_streams_in_authenticated_chunks_and_tampering_stops_the_stream() {
    let t = common::setup();
    let s = t
        .mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let inbox = t
        .mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    let mut raw = b"Subject: big\r\n\r\n".to_vec();
    while raw.len() < 3 * 1024 * 1024 {
        raw.extend_from_slice(format!("line {} of a large body\r\n", raw.len()).as_bytes());
    }
    t.mail
        .append(&s, inbox.id, &raw, &[], InternalDate::now())
        .await
        .unwrap();
    let m = t.mail.messages(&s, inbox.id).await.unwrap().remove(0);
    let mut chunks = t.mail.body_chunks(&s, &m).await.unwrap();
    let mut got = Vec::new();
    let mut count = 0;
    while let Some(c) = chunks.recv().await {
        let c = c.unwrap();
        got.extend_from_slice(&c);
        // Given back, as the IMAP server does: later chunks are decrypted into it.
        chunks.give_back(c);
        count += 1;
    }
    assert_eq!(got, raw);
    assert!(count > 1, "more than one chunk: {count}");

    // Flip one byte in the middle of the sealed blob file.
    let hex = m.blob_id.to_hex();
    let path = t.dir.join("blobs").join(&hex[..2]).join(&hex);
    let mut sealed = std::fs::read(&path).unwrap();
    let at = sealed.len() / 2;
    sealed[at] ^= 0x01;
    std::fs::write(&path, &sealed).unwrap();
    let mut chunks = t.mail.body_chunks(&s, &m).await.unwrap();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(c) = chunks.recv().await {
        match c {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => {
                assert!(matches!(e, MailError::Tampered(_)), "{e}");
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the tampered chunk ends the stream with an error");
    assert!(
        got.len() < raw.len() && raw.starts_with(&got),
        "only good bytes came out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_read_reseals_every_delivered_row_in_batches() {
    let t = common::setup();
    let s = t
        .mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let inbox = t
        .mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    let user = *s.user_id();
    // More than one batch of re-seals (256).
    for i in 0..300 {
        let body = format!("Subject: n{i}\r\n\r\nbody {i}\r\n");
        coffer_mail::deliver(
            &t.store,
            t.mail.vault().pepper(),
            &user,
            None,
            body.as_bytes(),
            InternalDate::now(),
        )
        .await
        .unwrap();
    }
    let before = t.store.list_messages(&user, inbox.id).await.unwrap();
    assert!(
        before
            .iter()
            .all(|r| matches!(r.seal, SealRef::PublicKey(_)))
    );
    let msgs = t.mail.messages(&s, inbox.id).await.unwrap();
    assert_eq!(msgs.len(), 300);
    assert!(msgs.iter().all(|m| matches!(m.seal, SealRef::IndexKey(_))));
    let after = t.store.list_messages(&user, inbox.id).await.unwrap();
    assert!(
        after.iter().all(|r| matches!(r.seal, SealRef::IndexKey(_))),
        "every row is resealed in the store"
    );
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((b.uid, b.modseq), (a.uid, a.modseq), "no MODSEQ moves");
    }
    // Each still opens, with its own subject in its summary.
    for (i, m) in t
        .mail
        .messages(&s, inbox.id)
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        let env = &m.summary.as_deref().unwrap().envelope;
        assert!(
            env.windows(format!("\"n{i}\"").len())
                .any(|w| w == format!("\"n{i}\"").as_bytes()),
            "UID {}",
            m.uid
        );
    }
}
