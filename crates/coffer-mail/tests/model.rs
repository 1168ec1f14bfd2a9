//! The mailbox model end to end over the embedded store: what a mail client relies on.

mod common;

use std::sync::Arc;

use coffer_mail::{FlagOp, InternalDate, MailError};
use coffer_store::{SealRef, Store};
use coffer_types::{Flag, MailboxName, SecurityMode, SpecialUse};
use coffer_vault::Purpose;

const PW: &str = "correct horse battery";

fn name(s: &str) -> MailboxName {
    MailboxName::new(s).unwrap()
}

/// A new user "alice", her session, INBOX and Trash.
async fn alice_with_inbox_and_trash(
    t: &common::Setup,
) -> (
    coffer_vault::Unlocked,
    coffer_mail::Mailbox,
    coffer_mail::Mailbox,
) {
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
    let trash = t
        .mail
        .find_mailbox(&s, &name("Trash"))
        .await
        .unwrap()
        .unwrap();
    (s, inbox, trash)
}

#[tokio::test(flavor = "multi_thread")]
async fn new_users_get_inbox_and_special_use_mailboxes() {
    let t = common::setup();
    let s = t
        .mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let boxes = t.mail.list_mailboxes(&s).await.unwrap();
    let names: Vec<&str> = boxes.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    );
    let roles: Vec<Option<SpecialUse>> = boxes.iter().map(|m| m.special_use).collect();
    assert_eq!(
        roles,
        vec![
            Some(SpecialUse::Archive),
            Some(SpecialUse::Drafts),
            None,
            Some(SpecialUse::Junk),
            Some(SpecialUse::Sent),
            Some(SpecialUse::Trash)
        ]
    );
    assert!(boxes.iter().all(|m| m.subscribed));
}

#[tokio::test(flavor = "multi_thread")]
async fn create_rename_delete_with_hierarchy() {
    let t = common::setup();
    let s = t
        .mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let deep = t
        .mail
        .create_mailbox(&s, &name("Work/Projects/Coffer"))
        .await
        .unwrap();
    assert!(
        t.mail
            .find_mailbox(&s, &name("Work"))
            .await
            .unwrap()
            .is_some(),
        "parents created"
    );
    assert!(matches!(
        t.mail.create_mailbox(&s, &name("Work")).await,
        Err(MailError::MailboxExists)
    ));
    let (uid, _) = t
        .mail
        .append(
            &s,
            deep.id,
            b"Subject: x\r\n\r\nbody",
            &[],
            InternalDate::now(),
        )
        .await
        .unwrap();

    t.mail
        .rename_mailbox(&s, &name("Work"), &name("Job"))
        .await
        .unwrap();
    assert!(
        t.mail
            .find_mailbox(&s, &name("Work"))
            .await
            .unwrap()
            .is_none()
    );
    let moved = t
        .mail
        .find_mailbox(&s, &name("Job/Projects/Coffer"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.id, deep.id, "children follow the rename");
    assert_eq!(
        moved.uid_validity, deep.uid_validity,
        "rename keeps UIDVALIDITY"
    );
    assert!(t.mail.message(&s, moved.id, uid).await.unwrap().is_some());

    assert!(matches!(
        t.mail.delete_mailbox(&s, &name("Job")).await,
        Err(MailError::HasChildren)
    ));
    assert!(matches!(
        t.mail.delete_mailbox(&s, &name("INBOX")).await,
        Err(MailError::NotAllowed(_))
    ));
    t.mail
        .delete_mailbox(&s, &name("Job/Projects/Coffer"))
        .await
        .unwrap();
    assert!(
        t.mail
            .find_mailbox(&s, &name("Job/Projects/Coffer"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        t.mail.delete_mailbox(&s, &name("Nope")).await,
        Err(MailError::NoSuchMailbox)
    ));
    t.mail
        .set_subscribed(&s, &name("Job"), false)
        .await
        .unwrap();
    assert!(
        !t.mail
            .find_mailbox(&s, &name("Job"))
            .await
            .unwrap()
            .unwrap()
            .subscribed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn renaming_inbox_moves_its_messages() {
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
    for i in 0..3 {
        t.mail
            .append(
                &s,
                inbox.id,
                format!("Subject: {i}\r\n\r\n").as_bytes(),
                &[],
                InternalDate::now(),
            )
            .await
            .unwrap();
    }
    let old = t
        .mail
        .rename_mailbox(&s, &MailboxName::inbox(), &name("Old Inbox"))
        .await
        .unwrap();
    assert_eq!(t.mail.messages(&s, old.id).await.unwrap().len(), 3);
    let inbox_after = t
        .mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbox_after.id, inbox.id, "INBOX stays");
    assert!(t.mail.messages(&s, inbox.id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn append_flags_expunge_copy_move() {
    let t = common::setup();
    let (s, inbox, trash) = alice_with_inbox_and_trash(&t).await;
    let body = b"From: a@example.org\r\nSubject: hello\r\n\r\nHello world\r\n";
    let date = coffer_mail::InternalDate {
        timestamp: 1_700_000_000,
        tz_offset_minutes: 120,
    };
    let (u1, m1) = t
        .mail
        .append(&s, inbox.id, body, &[Flag::Seen], date)
        .await
        .unwrap();
    let (u2, m2) = t
        .mail
        .append(&s, inbox.id, b"x", &[], InternalDate::now())
        .await
        .unwrap();
    assert!(u2 > u1 && m2 > m1);

    let msgs = t.mail.messages(&s, inbox.id).await.unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].size, body.len() as u64);
    assert_eq!(
        (msgs[0].internal_date, msgs[0].tz_offset_minutes),
        (1_700_000_000, 120)
    );
    assert_eq!(msgs[0].flags, vec![Flag::Seen]);
    assert_eq!(t.mail.body(&s, &msgs[0]).await.unwrap().as_slice(), body);

    let kw = Flag::Keyword("$Important".into());
    let upd = t
        .mail
        .store_flags(
            &s,
            inbox.id,
            &[u1, u2],
            FlagOp::Add,
            &[Flag::Flagged, kw.clone()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(upd.changed, vec![u1, u2]);
    let m = t.mail.message(&s, inbox.id, u1).await.unwrap().unwrap();
    assert_eq!(m.flags, vec![Flag::Seen, Flag::Flagged, kw.clone()]);
    assert_eq!(m.modseq, upd.modseq.unwrap());
    t.mail
        .store_flags(&s, inbox.id, &[u1], FlagOp::Remove, &[Flag::Seen], None)
        .await
        .unwrap();
    let m = t.mail.message(&s, inbox.id, u1).await.unwrap().unwrap();
    assert_eq!(m.flags, vec![Flag::Flagged, kw.clone()]);
    // UNCHANGEDSINCE below the current MODSEQ: refused for that message.
    let stale = t
        .mail
        .store_flags(
            &s,
            inbox.id,
            &[u1],
            FlagOp::Replace,
            &[],
            Some(m.modseq.get() - 1),
        )
        .await
        .unwrap();
    assert_eq!(stale.skipped, vec![u1]);

    let copies = t.mail.copy(&s, inbox.id, &[u1], trash.id).await.unwrap();
    assert_eq!(copies.len(), 1);
    let copy = t
        .mail
        .message(&s, trash.id, copies[0].1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy.flags, m.flags, "COPY keeps flags");
    assert_eq!(t.mail.body(&s, &copy).await.unwrap().as_slice(), body);

    t.mail
        .store_flags(&s, inbox.id, &[u2], FlagOp::Add, &[Flag::Deleted], None)
        .await
        .unwrap();
    let (gone, _) = t.mail.expunge_deleted(&s, inbox.id).await.unwrap();
    assert_eq!(gone, vec![u2]);

    let moved = t
        .mail
        .move_messages(&s, inbox.id, &[u1], trash.id)
        .await
        .unwrap();
    assert_eq!(moved.len(), 1);
    assert!(t.mail.messages(&s, inbox.id).await.unwrap().is_empty());
    let in_trash = t.mail.messages(&s, trash.id).await.unwrap();
    assert_eq!(in_trash.len(), 2);
    for m in &in_trash {
        assert_eq!(
            t.mail.body(&s, m).await.unwrap().as_slice(),
            body,
            "copy and original both open"
        );
    }
    let (n, problems) = t.mail.check_user(&s).await.unwrap();
    assert_eq!((n, problems), (2, Vec::<String>::new()));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_append_is_refused_and_nothing_is_stored() {
    let t = common::setup();
    let mail = t.mail.clone().with_max_message_bytes(100);
    let s = mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let inbox = mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    let r = mail
        .append(&s, inbox.id, &[b'x'; 101], &[], InternalDate::now())
        .await;
    assert!(matches!(r, Err(MailError::TooLarge(100))));
    assert!(mail.messages(&s, inbox.id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_needs_only_the_public_key_and_is_readable_after_unlock() {
    let t = common::setup();
    let s = t
        .mail
        .create_user("alice", PW, SecurityMode::High)
        .await
        .unwrap();
    let user = *s.user_id();
    let work = t.mail.create_mailbox(&s, &name("Work")).await.unwrap();
    drop(s); // the user goes away: grace is zero, keys are wiped
    assert!(!t.mail.vault().registry().is_unlocked(&user));

    let pepper = t.mail.vault().pepper();
    let body = b"Subject: delivered\r\n\r\nwhile away\r\n";
    let d1 = coffer_mail::deliver(&t.store, pepper, &user, None, body, InternalDate::now())
        .await
        .unwrap();
    let d2 = coffer_mail::deliver(
        &t.store,
        pepper,
        &user,
        Some(&name("Work")),
        body,
        InternalDate::now(),
    )
    .await
    .unwrap();
    let d3 = coffer_mail::deliver(
        &t.store,
        pepper,
        &user,
        Some(&name("Missing")),
        body,
        InternalDate::now(),
    )
    .await
    .unwrap();
    assert_eq!(d2.mailbox, work.id);
    assert_eq!(d3.mailbox, d1.mailbox, "unknown folder falls back to INBOX");
    let row = t
        .store
        .get_message(&user, d1.mailbox, d1.uid)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(row.seal, SealRef::PublicKey(_)));

    let s = t
        .mail
        .vault()
        .login("alice", PW, Purpose::Mail)
        .await
        .unwrap();
    let inbox = t.mail.messages(&s, d1.mailbox).await.unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(t.mail.body(&s, &inbox[0]).await.unwrap().as_slice(), body);
    let row = t
        .store
        .get_message(&user, d1.mailbox, d1.uid)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(row.seal, SealRef::IndexKey(_)),
        "resealed under the index key"
    );
    assert_eq!(
        t.mail.messages(&s, d1.mailbox).await.unwrap(),
        inbox,
        "same view after reseal"
    );

    let unknown = coffer_types::UserId([9; 32]);
    assert!(matches!(
        coffer_mail::deliver(&t.store, pepper, &unknown, None, body, InternalDate::now()).await,
        Err(MailError::NoSuchUser)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_hides_old_mail_and_reopen_brings_it_back_under_recovered() {
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
    let body = b"Subject: old\r\n\r\nfrom before the reset\r\n";
    t.mail
        .append(&s, inbox.id, body, &[Flag::Seen], InternalDate::now())
        .await
        .unwrap();
    drop(s);

    let s = t
        .mail
        .reset_user("alice", "a brand new password")
        .await
        .unwrap();
    let boxes = t.mail.list_mailboxes(&s).await.unwrap();
    assert_eq!(boxes.len(), 6, "fresh default mailboxes only");
    let new_inbox = t
        .mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new_inbox.id, inbox.id);
    assert!(t.mail.messages(&s, new_inbox.id).await.unwrap().is_empty());

    let wrong = t.mail.reopen_old_mail(&s, "not the old one").await;
    assert!(wrong.is_err());
    let moved = t.mail.reopen_old_mail(&s, PW).await.unwrap();
    assert_eq!(moved.len(), 6);
    let recovered = t
        .mail
        .find_mailbox(&s, &name("Recovered/INBOX"))
        .await
        .unwrap()
        .unwrap();
    let msgs = t.mail.messages(&s, recovered.id).await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].flags, vec![Flag::Seen]);
    assert_eq!(t.mail.body(&s, &msgs[0]).await.unwrap().as_slice(), body);
    drop(s);
    // The link persists: a plain login with the new password sees the old mail.
    let s = t
        .mail
        .vault()
        .login("alice", "a brand new password", Purpose::Mail)
        .await
        .unwrap();
    let recovered = t
        .mail
        .find_mailbox(&s, &name("Recovered/INBOX"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.mail.messages(&s, recovered.id).await.unwrap().len(), 1);
}

fn flip_column(
    db: &rusqlite::Connection,
    table: &str,
    column: &str,
    key_col: &str,
    key: i64,
    at: usize,
) {
    let mut v: Vec<u8> = db
        .query_row(
            &format!("SELECT {column} FROM {table} WHERE {key_col} = ?1"),
            [key],
            |r| r.get(0),
        )
        .unwrap();
    v[at] ^= 0x01;
    db.execute(
        &format!("UPDATE {table} SET {column} = ?1 WHERE {key_col} = ?2"),
        rusqlite::params![v, key],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_rows_are_reported_by_object_never_garbage() {
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
    let (u1, _) = t
        .mail
        .append(
            &s,
            inbox.id,
            b"Subject: one\r\n\r\nx",
            &[Flag::Seen],
            InternalDate::now(),
        )
        .await
        .unwrap();
    let (u2, _) = t
        .mail
        .append(
            &s,
            inbox.id,
            b"Subject: two\r\n\r\ny",
            &[],
            InternalDate::now(),
        )
        .await
        .unwrap();
    let db = rusqlite::Connection::open(t.dir.join("coffer.db")).unwrap();

    // A blob swapped onto another message row is refused (the blob names its owner row).
    db.execute(
        "UPDATE messages SET blob_id = (SELECT blob_id FROM messages WHERE uid = ?1 AND mailbox_id = ?3),
                             blob_len = (SELECT blob_len FROM messages WHERE uid = ?1 AND mailbox_id = ?3)
         WHERE uid = ?2 AND mailbox_id = ?3",
        rusqlite::params![u1.get(), u2.get(), inbox.id.0],
    )
    .unwrap();
    let err = t.mail.message(&s, inbox.id, u2).await.unwrap_err();
    assert!(
        matches!(err, MailError::Tampered(ref what) if what.contains("blob")),
        "{err}"
    );

    // A flipped byte in the sealed flags or metadata names the message.
    flip_column(&db, "messages", "sealed_flags", "uid", u1.get() as i64, 30);
    let err = t.mail.messages(&s, inbox.id).await.unwrap_err();
    assert!(
        matches!(err, MailError::Tampered(ref what) if what.contains("flags")),
        "{err}"
    );
    flip_column(&db, "messages", "sealed_meta", "uid", u1.get() as i64, 5);
    let err = t.mail.message(&s, inbox.id, u1).await.unwrap_err();
    assert!(
        matches!(err, MailError::Tampered(ref what) if what.contains("metadata")),
        "{err}"
    );

    // A flipped byte in a sealed mailbox name.
    flip_column(&db, "mailboxes", "sealed", "id", inbox.id.0, 40);
    let err = t.mail.list_mailboxes(&s).await.unwrap_err();
    assert!(
        matches!(err, MailError::Tampered(ref what) if what.contains("mailbox")),
        "{err}"
    );

    // With the mailbox row restored, `check_user` reports both damaged messages instead
    // of stopping at the first.
    flip_column(&db, "mailboxes", "sealed", "id", inbox.id.0, 40);
    let (n, problems) = t.mail.check_user(&s).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

/// The mailbox view that SELECT and the change checks use is kept between calls and
/// brought up to date from what changed since (rows above its MODSEQ, expunge records):
/// after every kind of change, in any order, it equals the mailbox read whole.
#[tokio::test(flavor = "multi_thread")]
async fn the_kept_mailbox_view_follows_every_kind_of_change() {
    let t = common::setup();
    let (s, inbox, trash) = alice_with_inbox_and_trash(&t).await;
    let date = InternalDate::now();
    let body = b"From: a@example.org\r\nSubject: view\r\n\r\nbody\r\n";
    for _ in 0..5 {
        t.mail.append(&s, inbox.id, body, &[], date).await.unwrap();
    }
    let whole = |mut m: Vec<coffer_mail::Message>| {
        m.iter_mut().for_each(|m| m.flags.sort());
        m.into_iter()
            .map(|m| (m.uid, m.modseq, m.flags))
            .collect::<Vec<_>>()
    };
    let flags = [
        Flag::Seen,
        Flag::Flagged,
        Flag::Deleted,
        Flag::Keyword("$Work".into()),
    ];
    let mut kinds = std::collections::BTreeSet::new();
    for step in 0..120 {
        let view = t.mail.flags_view(&s, inbox.id).await.unwrap();
        let uids: Vec<_> = view.iter().map(|e| e.uid).collect();
        let pick = |n: u64| uids[(n % uids.len().max(1) as u64) as usize];
        let r: u64 = rand::random();
        let kind = if uids.len() < 3 { 0 } else { r % 7 };
        kinds.insert(kind);
        match kind {
            0 => {
                t.mail
                    .append(&s, inbox.id, body, &[Flag::Seen], date)
                    .await
                    .unwrap();
            }
            1 | 2 => {
                let op = [FlagOp::Add, FlagOp::Remove, FlagOp::Replace][(r / 7 % 3) as usize];
                let f = flags[(r / 21 % 4) as usize].clone();
                t.mail
                    .store_flags(&s, inbox.id, &[pick(r / 84), pick(r / 97)], op, &[f], None)
                    .await
                    .unwrap();
            }
            3 => {
                t.mail
                    .expunge(&s, inbox.id, vec![pick(r / 7)])
                    .await
                    .unwrap();
            }
            4 => {
                t.mail
                    .move_messages(&s, inbox.id, &[pick(r / 7)], trash.id)
                    .await
                    .unwrap();
                let back: Vec<_> = t
                    .mail
                    .messages(&s, trash.id)
                    .await
                    .unwrap()
                    .iter()
                    .map(|m| m.uid)
                    .collect();
                if r.is_multiple_of(2) {
                    t.mail
                        .move_messages(&s, trash.id, &back[..1], inbox.id)
                        .await
                        .unwrap();
                }
            }
            5 => {
                t.mail
                    .copy(&s, inbox.id, &[pick(r / 7)], inbox.id)
                    .await
                    .unwrap();
            }
            _ => {
                // Delivery seals to the public key; the first read re-seals the row.
                coffer_mail::deliver(
                    &t.store,
                    t.mail.vault().pepper(),
                    s.user_id(),
                    None,
                    body,
                    date,
                )
                .await
                .unwrap();
            }
        }
        let view = t.mail.flags_view(&s, inbox.id).await.unwrap();
        let mut got: Vec<_> = view
            .iter()
            .map(|e| {
                let mut f = e.flags.to_vec();
                f.sort();
                (e.uid, e.modseq, f)
            })
            .collect();
        got.sort_by_key(|e| e.0);
        let want = whole(t.mail.messages(&s, inbox.id).await.unwrap());
        assert_eq!(got, want, "after step {step} (kind {kind})");
        // SELECT's summary of the view: keywords in use and the first unseen message,
        // computed once per state and then served from the cache.
        let mb = t.mail.get_mailbox(&s, inbox.id).await.unwrap();
        let (_, summary) = t
            .mail
            .select_view(&s, inbox.id, mb.uid_next, mb.highest_modseq)
            .await
            .unwrap();
        let mut keywords: Vec<String> = want
            .iter()
            .flat_map(|(_, _, f)| f.iter())
            .filter_map(|f| match f {
                Flag::Keyword(k) => Some(k.clone()),
                _ => None,
            })
            .collect();
        keywords.sort();
        keywords.dedup();
        let first_unseen = want.iter().position(|(_, _, f)| !f.contains(&Flag::Seen));
        assert_eq!(
            summary.keywords, keywords,
            "after step {step} (kind {kind})"
        );
        assert_eq!(
            summary.first_unseen, first_unseen,
            "after step {step} (kind {kind})"
        );
        let (_, again) = t
            .mail
            .select_view(&s, inbox.id, mb.uid_next, mb.highest_modseq)
            .await
            .unwrap();
        assert!(
            Arc::ptr_eq(&summary, &again),
            "an unchanged mailbox's summary is cached"
        );
    }
    assert!(kinds.len() >= 6, "every kind of change ran: {kinds:?}");
}
