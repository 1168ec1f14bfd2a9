//! The conformance suite every [`Store`] backend must pass.
//!
//! A backend's own tests call [`run_all`] on a fresh, empty store. The suite uses opaque
//! byte strings for every sealed column: a store must never need to understand them.

use crate::*;
use coffer_types::*;

fn user(n: u8) -> UserId {
    UserId([n; 32])
}

fn slot(u: UserId, kind: SlotKind, locator: Option<[u8; 32]>, generation: u32) -> SlotRow {
    SlotRow {
        user_id: u,
        slot_id: SlotId(rand::random()),
        kind,
        generation: Generation(generation),
        locator,
        kdf: locator.map(|_| KdfParams {
            memory_kib: 8,
            time_cost: 1,
            parallelism: 1,
        }),
        wrapped: vec![kind.code(); 72],
        sealed_label: None,
        created: 1,
        last_used: None,
    }
}

fn mailbox(name: u8, is_inbox: bool) -> NewMailbox {
    NewMailbox {
        generation: Generation(1),
        sealed: vec![name; 40],
        lookup: [name; 32],
        is_inbox,
    }
}

fn message() -> NewMessage {
    NewMessage {
        msg_id: MsgId(rand::random()),
        blob_id: BlobId(rand::random()),
        blob_len: 11,
        seal: SealRef::IndexKey(Generation(1)),
        sealed_meta: vec![7; 50],
        sealed_flags: None,
    }
}

async fn new_account(store: &dyn Store, u: UserId) -> Vec<MailboxRow> {
    store
        .create_account(NewAccount {
            account: AccountRow {
                user_id: u,
                sealed_name: vec![1, 2, 3],
                generation: Generation(1),
                mode: SecurityMode::High,
                kdf_salt: [9; 16],
                inbox: None,
                created: 100,
            },
            keyring: KeyringRow {
                user_id: u,
                generation: Generation(1),
                public_key: [5; 32],
                created: 100,
            },
            slots: vec![slot(u, SlotKind::Password, Some([u.0[0]; 32]), 1)],
            mailboxes: vec![mailbox(1, true), mailbox(2, false)],
        })
        .await
        .expect("create account")
}

async fn append_one(store: &dyn Store, u: UserId, mb: MailboxId) -> (NewMessage, Uid, ModSeq) {
    let m = message();
    store
        .put_blob(&u, &m.blob_id, b"ciphertext!".to_vec())
        .await
        .unwrap();
    let (uids, modseq) = store.append(&u, mb, vec![m.clone()]).await.unwrap();
    (m, uids[0], modseq)
}

/// Runs every conformance check in turn.
pub async fn run_all(store: &dyn Store) {
    accounts(store).await;
    slots_and_modes(store).await;
    mailboxes(store).await;
    messages_uids_and_modseqs(store).await;
    flags_and_condstore(store).await;
    expunge_move_and_blobs(store).await;
    reset_and_links(store).await;
    delete_account_removes_everything(store).await;
    blobs_small_and_large(store).await;
    check_reports_missing_blobs(store).await;
}

async fn accounts(store: &dyn Store) {
    assert_eq!(store.get_meta("x").await.unwrap(), None);
    store.set_meta("x", b"1").await.unwrap();
    store.set_meta("x", b"2").await.unwrap();
    assert_eq!(store.get_meta("x").await.unwrap(), Some(b"2".to_vec()));

    let u = user(1);
    let boxes = new_account(store, u).await;
    assert_eq!(boxes.len(), 2);
    let a = store.get_account(&u).await.unwrap().expect("account");
    assert_eq!(a.inbox, Some(boxes[0].id), "INBOX pointer set on creation");
    assert_eq!(a.kdf_salt, [9; 16]);
    assert_eq!(a.sealed_name, vec![1, 2, 3]);
    let again = store
        .create_account(NewAccount {
            account: a.clone(),
            keyring: KeyringRow {
                user_id: u,
                generation: Generation(1),
                public_key: [0; 32],
                created: 0,
            },
            slots: vec![],
            mailboxes: vec![],
        })
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "duplicate account refused"
    );
    assert!(store.get_account(&user(99)).await.unwrap().is_none());
    assert!(
        store
            .list_accounts()
            .await
            .unwrap()
            .iter()
            .any(|x| x.user_id == u)
    );
}

async fn slots_and_modes(store: &dyn Store) {
    let u = user(2);
    new_account(store, u).await;
    let pw = store
        .find_slot(&u, &[2; 32])
        .await
        .unwrap()
        .expect("password slot");
    assert_eq!(pw.kind, SlotKind::Password);
    assert!(store.find_slot(&u, &[3; 32]).await.unwrap().is_none());
    // Another user's locator is not found under this user.
    assert!(store.find_slot(&u, &[1; 32]).await.unwrap().is_none());

    let app = slot(u, SlotKind::AppPassword, Some([20; 32]), 1);
    let new_pw = slot(u, SlotKind::Password, Some([21; 32]), 1);
    store
        .replace_slots(&u, vec![app.clone(), new_pw.clone()], vec![pw.slot_id])
        .await
        .unwrap();
    assert!(
        store.find_slot(&u, &[2; 32]).await.unwrap().is_none(),
        "old slot removed"
    );
    assert_eq!(
        store.find_slot(&u, &[20; 32]).await.unwrap(),
        Some(app.clone())
    );
    assert_eq!(store.list_slots(&u).await.unwrap().len(), 2);

    // A duplicate locator is refused and the transaction leaves nothing behind.
    let dup = slot(u, SlotKind::AppPassword, Some([20; 32]), 1);
    let r = store
        .replace_slots(&u, vec![dup], vec![new_pw.slot_id])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))));
    assert!(
        store.find_slot(&u, &[21; 32]).await.unwrap().is_some(),
        "rolled back"
    );

    store.touch_slot(&u, &app.slot_id, 4242).await.unwrap();
    let touched = store.find_slot(&u, &[20; 32]).await.unwrap().unwrap();
    assert_eq!(touched.last_used, Some(4242));

    let escrow = slot(u, SlotKind::Escrow, None, 1);
    store
        .set_mode(&u, SecurityMode::Low, Some(escrow.clone()))
        .await
        .unwrap();
    let a = store.get_account(&u).await.unwrap().unwrap();
    assert_eq!(a.mode, SecurityMode::Low);
    assert!(store.list_slots(&u).await.unwrap().contains(&escrow));
    store.set_mode(&u, SecurityMode::High, None).await.unwrap();
    let slots = store.list_slots(&u).await.unwrap();
    assert!(
        slots.iter().all(|s| s.kind != SlotKind::Escrow),
        "escrow removed in high mode"
    );
    assert_eq!(
        store.get_account(&u).await.unwrap().unwrap().mode,
        SecurityMode::High
    );
}

async fn mailboxes(store: &dyn Store) {
    let u = user(3);
    let boxes = new_account(store, u).await;
    let created = store.create_mailbox(&u, mailbox(3, false)).await.unwrap();
    assert_eq!(created.uid_next, 1);
    assert!(
        created.uid_validity.get() > boxes[1].uid_validity.get(),
        "UIDVALIDITY grows with every mailbox"
    );
    let dup = store.create_mailbox(&u, mailbox(3, false)).await;
    assert!(
        matches!(dup, Err(StoreError::Conflict(_))),
        "duplicate lookup refused"
    );
    assert_eq!(
        store.find_mailbox(&u, &[3; 32]).await.unwrap().unwrap().id,
        created.id
    );
    assert!(
        store
            .find_mailbox(&user(1), &[3; 32])
            .await
            .unwrap()
            .is_none(),
        "per user"
    );

    store
        .update_mailbox(&u, created.id, Generation(1), vec![4; 40], [4; 32])
        .await
        .unwrap();
    let renamed = store.get_mailbox(&u, created.id).await.unwrap().unwrap();
    assert_eq!((renamed.sealed, renamed.lookup), (vec![4; 40], [4; 32]));
    assert_eq!(
        renamed.uid_validity, created.uid_validity,
        "rename keeps UIDVALIDITY"
    );
    let clash = store
        .update_mailbox(&u, created.id, Generation(1), vec![1; 40], [1; 32])
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))));

    store.delete_mailbox(&u, created.id).await.unwrap();
    assert!(store.get_mailbox(&u, created.id).await.unwrap().is_none());
    let recreated = store.create_mailbox(&u, mailbox(4, false)).await.unwrap();
    assert_ne!(
        recreated.uid_validity, created.uid_validity,
        "new UIDVALIDITY after delete"
    );
    assert_eq!(store.list_mailboxes(&u).await.unwrap().len(), 3);
    assert!(
        store
            .get_mailbox(&user(1), recreated.id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn messages_uids_and_modseqs(store: &dyn Store) {
    let u = user(4);
    let boxes = new_account(store, u).await;
    let inbox = boxes[0].id;
    let (m1, uid1, ms1) = append_one(store, u, inbox).await;
    let (_, uid2, ms2) = append_one(store, u, inbox).await;
    assert_eq!((uid1.get(), uid2.get()), (1, 2));
    assert!(ms2 > ms1);

    let batch = vec![message(), message(), message()];
    for m in &batch {
        store
            .put_blob(&u, &m.blob_id, b"ciphertext!".to_vec())
            .await
            .unwrap();
    }
    let (uids, ms3) = store.append(&u, inbox, batch).await.unwrap();
    assert_eq!(
        uids.iter().map(|u| u.get()).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(ms3 > ms2);

    let all = store.list_messages(&u, inbox).await.unwrap();
    assert_eq!(all.len(), 5);
    // Twenty more are appended below; here: five messages of 11 stored bytes.
    assert_eq!(store.stored_bytes(&u).await.unwrap(), 55);
    assert_eq!(store.stored_bytes(&user(99)).await.unwrap(), 0);
    let some = store
        .get_messages(
            &u,
            inbox,
            vec![
                Uid::new(4).unwrap(),
                Uid::new(2).unwrap(),
                Uid::new(99).unwrap(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        some.iter().map(|m| m.uid.get()).collect::<Vec<_>>(),
        vec![2, 4]
    );
    // A run of consecutive UIDs (one range read in the embedded store), duplicated and out
    // of order, and a run reaching past the last UID.
    let uids = |v: &[u32]| v.iter().map(|u| Uid::new(*u).unwrap()).collect::<Vec<_>>();
    for (asked, want) in [
        (vec![3, 2, 4, 3], vec![2, 3, 4]),
        (vec![4, 5, 6, 7], vec![4, 5]),
        (vec![1, 2, 3, 4, 5], vec![1, 2, 3, 4, 5]),
        (vec![5], vec![5]),
    ] {
        let got = store.get_messages(&u, inbox, uids(&asked)).await.unwrap();
        assert_eq!(
            got.iter().map(|m| m.uid.get()).collect::<Vec<_>>(),
            want,
            "asked for {asked:?}"
        );
    }
    assert!(
        store
            .get_messages(&user(1), inbox, vec![Uid::new(2).unwrap()])
            .await
            .unwrap()
            .is_empty()
    );
    let flags = store.list_flags(&u, inbox).await.unwrap();
    assert_eq!(flags.len(), 5);
    for (f, m) in flags.iter().zip(&all) {
        assert_eq!(
            (f.uid, f.modseq, f.msg_id, f.seal, &f.sealed_flags),
            (m.uid, m.modseq, m.msg_id, m.seal, &m.sealed_flags)
        );
    }
    assert!(all.windows(2).all(|w| w[0].uid < w[1].uid), "UID order");
    let first = store.get_message(&u, inbox, uid1).await.unwrap().unwrap();
    assert_eq!(first.msg_id, m1.msg_id);
    assert_eq!(first.sealed_meta, m1.sealed_meta);
    assert_eq!(
        store.get_blob(&u, &m1.blob_id).await.unwrap(),
        b"ciphertext!"
    );
    let mut streamed = Vec::new();
    std::io::Read::read_to_end(
        &mut store.open_blob(&u, &m1.blob_id).await.unwrap(),
        &mut streamed,
    )
    .unwrap();
    assert_eq!(streamed, b"ciphertext!", "open_blob reads the same bytes");
    let mb = store.get_mailbox(&u, inbox).await.unwrap().unwrap();
    assert_eq!(mb.uid_next, 6);
    assert_eq!(mb.highest_modseq, ms3.get());

    // Appending to another user's mailbox id is refused.
    let r = store.append(&user(1), inbox, vec![message()]).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))));
    assert!(
        store
            .get_message(&user(1), inbox, uid1)
            .await
            .unwrap()
            .is_none()
    );

    // Concurrent appends never share a UID.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let m = message();
        store
            .put_blob(&u, &m.blob_id, b"ciphertext!".to_vec())
            .await
            .unwrap();
        tasks.push(async move { store.append(&u, inbox, vec![m]).await });
    }
    let results = futures::future::join_all(tasks).await;
    let mut seen: Vec<u32> = results.into_iter().map(|r| r.unwrap().0[0].get()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
}

async fn flags_and_condstore(store: &dyn Store) {
    let u = user(5);
    let boxes = new_account(store, u).await;
    let inbox = boxes[0].id;
    let (_, uid1, _) = append_one(store, u, inbox).await;
    let (_, uid2, ms2) = append_one(store, u, inbox).await;

    let upd = store
        .set_flags(&u, inbox, vec![(uid1, vec![1]), (uid2, vec![2])], None)
        .await
        .unwrap();
    assert_eq!(upd.changed, vec![uid1, uid2]);
    let ms = upd.modseq.unwrap();
    assert!(ms > ms2);
    let m1 = store.get_message(&u, inbox, uid1).await.unwrap().unwrap();
    assert_eq!((m1.sealed_flags, m1.modseq), (Some(vec![1]), ms));

    // UNCHANGEDSINCE older than the message's MODSEQ: skipped, untouched.
    let upd2 = store
        .set_flags(&u, inbox, vec![(uid1, vec![9])], Some(ms.get() - 1))
        .await
        .unwrap();
    assert_eq!((upd2.changed.len(), upd2.skipped), (0, vec![uid1]));
    assert_eq!(upd2.modseq, None);
    let m1 = store.get_message(&u, inbox, uid1).await.unwrap().unwrap();
    assert_eq!(m1.sealed_flags, Some(vec![1]));
    let missing = store
        .set_flags(&u, inbox, vec![(Uid::new(999).unwrap(), vec![1])], None)
        .await
        .unwrap();
    assert!(missing.changed.is_empty() && missing.skipped.is_empty());

    // A row sealed under the index key is not "resealed".
    let changed = store
        .reseal_message(
            &u,
            &m1.msg_id,
            SealRef::IndexKey(Generation(1)),
            vec![8; 10],
            vec![3],
        )
        .await
        .unwrap();
    assert!(!changed);
    assert_eq!(
        store
            .get_message(&u, inbox, uid1)
            .await
            .unwrap()
            .unwrap()
            .sealed_meta,
        m1.sealed_meta
    );

    // A delivered row: resealed once; flags set only if none were stored meanwhile.
    let delivered = NewMessage {
        seal: SealRef::PublicKey(Generation(1)),
        ..message()
    };
    store
        .put_blob(&u, &delivered.blob_id, b"ciphertext!".to_vec())
        .await
        .unwrap();
    let (d_uids, _) = store
        .append(&u, inbox, vec![delivered.clone()])
        .await
        .unwrap();
    store
        .set_flags(&u, inbox, vec![(d_uids[0], vec![42])], None)
        .await
        .unwrap();
    let before = store
        .get_message(&u, inbox, d_uids[0])
        .await
        .unwrap()
        .unwrap();
    let changed = store
        .reseal_message(
            &u,
            &delivered.msg_id,
            SealRef::IndexKey(Generation(1)),
            vec![8; 10],
            vec![0],
        )
        .await
        .unwrap();
    assert!(changed);
    let after = store
        .get_message(&u, inbox, d_uids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.seal, SealRef::IndexKey(Generation(1)));
    assert_eq!(after.sealed_meta, vec![8; 10]);
    assert_eq!(
        after.sealed_flags,
        Some(vec![42]),
        "flags stored meanwhile are kept"
    );
    assert_eq!(after.modseq, before.modseq, "no MODSEQ change");
    let again = store
        .reseal_message(
            &u,
            &delivered.msg_id,
            SealRef::IndexKey(Generation(1)),
            vec![9; 10],
            vec![0],
        )
        .await
        .unwrap();
    assert!(!again, "a second reseal changes nothing");

    // The summary cache: replaced only where the seal still matches, MODSEQ untouched.
    let n = store
        .replace_sealed_meta(
            &u,
            vec![
                (m1.msg_id, SealRef::IndexKey(Generation(1)), vec![5; 64]),
                (m1.msg_id, SealRef::IndexKey(Generation(2)), vec![6; 64]),
                (
                    MsgId([0xee; 16]),
                    SealRef::IndexKey(Generation(1)),
                    vec![7; 64],
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "only the row with that seal");
    let replaced = store.get_message(&u, inbox, uid1).await.unwrap().unwrap();
    assert_eq!(replaced.sealed_meta, vec![5; 64]);
    assert_eq!(replaced.modseq, m1.modseq, "no MODSEQ change");
    assert_eq!(replaced.sealed_flags, Some(vec![1]), "flags untouched");
    let _ = ms;
}

async fn expunge_move_and_blobs(store: &dyn Store) {
    let u = user(6);
    let boxes = new_account(store, u).await;
    let (inbox, other) = (boxes[0].id, boxes[1].id);
    let (m1, uid1, _) = append_one(store, u, inbox).await;
    let (_, uid2, _) = append_one(store, u, inbox).await;
    let (m3, uid3, _) = append_one(store, u, inbox).await;

    let before = store
        .get_mailbox(&u, inbox)
        .await
        .unwrap()
        .unwrap()
        .highest_modseq;
    let (removed, ms) = store
        .expunge(&u, inbox, vec![uid1, Uid::new(77).unwrap()])
        .await
        .unwrap();
    assert_eq!(removed, vec![uid1]);
    let ms = ms.unwrap();
    assert!(ms.get() > before);
    assert!(store.get_message(&u, inbox, uid1).await.unwrap().is_none());
    assert_eq!(
        store.expunged_since(&u, inbox, before).await.unwrap(),
        vec![uid1]
    );
    assert!(
        store
            .expunged_since(&u, inbox, ms.get())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        matches!(
            store.get_blob(&u, &m1.blob_id).await,
            Err(StoreError::NotFound(_))
        ),
        "blob of an expunged message is removed"
    );
    assert!(
        matches!(
            store.open_blob(&u, &m1.blob_id).await,
            Err(StoreError::NotFound(_))
        ),
        "and cannot be opened as a stream"
    );
    let (none, no_ms) = store.expunge(&u, inbox, vec![uid1]).await.unwrap();
    assert!(none.is_empty() && no_ms.is_none());

    // A copy shares the blob: expunging the original keeps it.
    let copy = NewMessage {
        msg_id: MsgId(rand::random()),
        ..m3.clone()
    };
    let (copy_uids, _) = store.append(&u, other, vec![copy]).await.unwrap();
    store.expunge(&u, inbox, vec![uid3]).await.unwrap();
    assert!(
        store.get_blob(&u, &m3.blob_id).await.is_ok(),
        "still referenced by the copy"
    );
    store.expunge(&u, other, copy_uids).await.unwrap();
    assert!(store.get_blob(&u, &m3.blob_id).await.is_err());

    let pairs = store
        .move_messages(&u, inbox, vec![uid2], other)
        .await
        .unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].0, uid2);
    assert!(store.get_message(&u, inbox, uid2).await.unwrap().is_none());
    let moved = store
        .get_message(&u, other, pairs[0].1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.mailbox, other);
    assert!(
        store
            .expunged_since(&u, inbox, 0)
            .await
            .unwrap()
            .contains(&uid2)
    );
    let dest = store.get_mailbox(&u, other).await.unwrap().unwrap();
    assert!(dest.uid_next > pairs[0].1.get());

    store.delete_mailbox(&u, other).await.unwrap();
    assert!(
        store.get_blob(&u, &moved.blob_id).await.is_err(),
        "delete removes blobs"
    );
}

async fn reset_and_links(store: &dyn Store) {
    let u = user(7);
    let boxes = new_account(store, u).await;
    store
        .set_mode(
            &u,
            SecurityMode::Low,
            Some(slot(u, SlotKind::Escrow, None, 1)),
        )
        .await
        .unwrap();
    let new_inbox = NewMailbox {
        generation: Generation(2),
        sealed: vec![2; 40],
        lookup: [200; 32],
        is_inbox: true,
    };
    let rows = store
        .reset_keyring(
            &u,
            KeyringRow {
                user_id: u,
                generation: Generation(2),
                public_key: [6; 32],
                created: 200,
            },
            vec![slot(u, SlotKind::Password, Some([70; 32]), 2)],
            vec![new_inbox],
        )
        .await
        .unwrap();
    let a = store.get_account(&u).await.unwrap().unwrap();
    assert_eq!(a.generation, Generation(2));
    assert_eq!(a.inbox, Some(rows[0].id));
    assert_eq!(store.list_keyrings(&u).await.unwrap().len(), 2);
    assert_eq!(
        store.list_mailboxes(&u).await.unwrap().len(),
        boxes.len() + 1,
        "old mailboxes kept"
    );
    let slots = store.list_slots(&u).await.unwrap();
    assert!(
        slots.iter().any(|s| s.generation == Generation(1)),
        "old slots kept"
    );
    assert!(
        slots.iter().all(|s| s.kind != SlotKind::Escrow),
        "old escrow dropped"
    );

    // A second reset to the same generation is refused.
    let r = store
        .reset_keyring(
            &u,
            KeyringRow {
                user_id: u,
                generation: Generation(2),
                public_key: [6; 32],
                created: 200,
            },
            vec![],
            vec![],
        )
        .await;
    assert!(r.is_err());

    store
        .put_link(KeyringLinkRow {
            user_id: u,
            generation: Generation(1),
            sealed_under: Generation(2),
            wrapped: vec![1; 60],
        })
        .await
        .unwrap();
    assert_eq!(store.list_links(&u).await.unwrap().len(), 1);
    let slots = store.list_slots(&u).await.unwrap();
    assert!(
        slots.iter().all(|s| s.generation == Generation(2)),
        "old-generation slots removed"
    );
}

async fn delete_account_removes_everything(store: &dyn Store) {
    let u = user(8);
    let boxes = new_account(store, u).await;
    let (m, _, _) = append_one(store, u, boxes[0].id).await;
    assert!(store.delete_account(&u).await.unwrap());
    assert!(store.get_account(&u).await.unwrap().is_none());
    assert!(store.list_slots(&u).await.unwrap().is_empty());
    assert!(store.list_mailboxes(&u).await.unwrap().is_empty());
    assert!(store.list_keyrings(&u).await.unwrap().is_empty());
    assert!(store.get_blob(&u, &m.blob_id).await.is_err());
    assert!(!store.delete_account(&u).await.unwrap());
}

async fn check_reports_missing_blobs(store: &dyn Store) {
    // data_version answers (its changes across processes are tested by the server).
    store.data_version().await.unwrap();
    assert_eq!(
        store.check().await.unwrap(),
        Vec::<String>::new(),
        "clean so far"
    );
    let u = user(9);
    let boxes = new_account(store, u).await;
    let m = message();
    // A row whose blob was never written is reported.
    store.append(&u, boxes[0].id, vec![m]).await.unwrap();
    let problems = store.check().await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("missing"));
    // An unreferenced blob is swept.
    let orphan = BlobId(rand::random());
    store.put_blob(&u, &orphan, vec![1, 2, 3]).await.unwrap();
    assert_eq!(store.sweep_orphans(0).await.unwrap(), 1);
    assert!(store.get_blob(&u, &orphan).await.is_err());
}

/// Blobs on both sides of the embedded store's inline limit, streamed in small pieces,
/// read back whole and as a stream, checked, and removed with their rows.
async fn blobs_small_and_large(store: &dyn Store) {
    let u = user(10);
    let boxes = new_account(store, u).await;
    let mut appended = Vec::new();
    for size in [1_000usize, 300 * 1024] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let m = NewMessage {
            blob_len: size as u64,
            ..message()
        };
        let pieces = data.clone();
        let len = store
            .put_blob_streamed(
                &u,
                &m.blob_id,
                Box::new(move |w| {
                    for piece in pieces.chunks(997) {
                        w.write_all(piece)?;
                    }
                    Ok(())
                }),
            )
            .await
            .unwrap();
        assert_eq!(len, size as u64, "streamed length of a {size}-byte blob");
        assert_eq!(store.get_blob(&u, &m.blob_id).await.unwrap(), data);
        let mut streamed = Vec::new();
        std::io::Read::read_to_end(
            &mut store.open_blob(&u, &m.blob_id).await.unwrap(),
            &mut streamed,
        )
        .unwrap();
        assert_eq!(streamed, data, "open_blob of a {size}-byte blob");
        let (uids, _) = store
            .append(&u, boxes[0].id, vec![m.clone()])
            .await
            .unwrap();
        appended.push((m, uids[0]));
    }
    assert_eq!(store.check().await.unwrap(), Vec::<String>::new());
    let uids = appended.iter().map(|(_, uid)| *uid).collect();
    store.expunge(&u, boxes[0].id, uids).await.unwrap();
    for (m, _) in &appended {
        assert!(
            matches!(
                store.get_blob(&u, &m.blob_id).await,
                Err(StoreError::NotFound(_))
            ),
            "an expunged message's blob of {} bytes is gone",
            m.blob_len
        );
    }
    assert!(store.delete_account(&u).await.unwrap());
}
