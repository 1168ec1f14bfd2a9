//! The marker test: store messages whose body, subject, From, mailbox name, keyword,
//! app password label and owner's username carry unique marker strings, through both the
//! unlocked append path and the public-key delivery path, then search every file under the
//! data directory (SQLite main, WAL and SHM files, blobs, temp files) for each marker, raw,
//! hex and base64 at every alignment: there must be zero hits.

mod common;

use coffer_mail::{FlagOp, InternalDate};
use coffer_types::{Flag, MailboxName, SecurityMode};
use std::path::Path;

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Encodings under which a marker could appear in a file.
fn needles(marker: &str) -> Vec<Vec<u8>> {
    let mut out = vec![
        marker.as_bytes().to_vec(),
        coffer_types::hex(marker.as_bytes()).into_bytes(),
    ];
    // Base64 of the marker at each of the three alignments, minus the edge characters
    // that depend on neighbouring bytes.
    for pad in 0..3 {
        let mut data = vec![b'x'; pad];
        data.extend_from_slice(marker.as_bytes());
        let enc = base64(&data);
        let skip = (pad * 4).div_ceil(3) + 1;
        out.push(enc.as_bytes()[skip..enc.len() - 2].to_vec());
    }
    out
}

fn scan(dir: &Path, markers: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for m in markers {
                for n in needles(m) {
                    if bytes.windows(n.len()).any(|w| w == n.as_slice()) {
                        hits.push(format!("{m} in {}", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        files >= 4,
        "scanned only {files} files: is the data directory populated?"
    );
    hits
}

#[tokio::test(flavor = "multi_thread")]
async fn no_marker_appears_anywhere_in_the_data_directory() {
    let t = common::setup();
    let tag = format!("{:016x}", rand::random::<u64>());
    let user = format!("mrkuser{tag}");
    let markers: Vec<String> = ["BODY", "SUBJ", "FROM", "MBOX", "KWRD", "LABEL", "DLVR"]
        .iter()
        .map(|k| format!("MRK{k}{tag}"))
        .chain([user.clone()])
        .collect();
    let [body_m, subj_m, from_m, mbox_m, kw_m, label_m, dlvr_m, _] = &markers[..] else {
        unreachable!()
    };

    let s = t
        .mail
        .create_user(&user, "correct horse battery", SecurityMode::High)
        .await
        .unwrap();
    let mbox = t
        .mail
        .create_mailbox(
            &s,
            &MailboxName::new(&format!("Projects/{mbox_m}")).unwrap(),
        )
        .await
        .unwrap();
    t.mail.vault().add_app_password(&s, label_m).await.unwrap();
    let mut msg =
        format!("From: {from_m} <a@example.org>\r\nSubject: {subj_m}\r\n\r\n").into_bytes();
    for _ in 0..200 {
        msg.extend_from_slice(format!("{body_m} lorem ipsum\r\n").as_bytes());
    }
    let keyword = Flag::Keyword(kw_m.clone());
    for _ in 0..5 {
        let (uid, _) = t
            .mail
            .append(
                &s,
                mbox.id,
                &msg,
                std::slice::from_ref(&keyword),
                InternalDate::now(),
            )
            .await
            .unwrap();
        t.mail
            .store_flags(&s, mbox.id, &[uid], FlagOp::Add, &[Flag::Seen], None)
            .await
            .unwrap();
    }
    // One message large enough to be a blob file rather than a row (coffer-store's
    // INLINE_BLOB_MAX is 96 KiB), so both places a body can be stored are scanned.
    let mut large = msg.clone();
    while large.len() < 150 * 1024 {
        large.extend_from_slice(format!("{body_m} dolor sit amet\r\n").as_bytes());
    }
    t.mail
        .append(&s, mbox.id, &large, &[], InternalDate::now())
        .await
        .unwrap();
    let inbox = t
        .mail
        .find_mailbox(&s, &MailboxName::inbox())
        .await
        .unwrap()
        .unwrap();
    t.mail
        .copy(&s, mbox.id, &[coffer_types::Uid::new(1).unwrap()], inbox.id)
        .await
        .unwrap();
    let user_id = *s.user_id();
    drop(s);

    let delivered = format!("From: {from_m}\r\nSubject: {subj_m}\r\n\r\n{dlvr_m}\r\n");
    for _ in 0..3 {
        coffer_mail::deliver(
            &t.store,
            t.mail.vault().pepper(),
            &user_id,
            None,
            delivered.as_bytes(),
            InternalDate::now(),
        )
        .await
        .unwrap();
    }
    let wal = t.dir.join("coffer.db-wal");
    assert!(wal.exists(), "the WAL is scanned while the store is open");
    let hits = scan(&t.dir, &markers);
    assert!(hits.is_empty(), "plaintext found at rest: {hits:?}");

    // Unlock again (reseals delivered rows), then scan once more.
    let s = t
        .mail
        .vault()
        .login(&user, "correct horse battery", coffer_vault::Purpose::Mail)
        .await
        .unwrap();
    let msgs = t.mail.messages(&s, inbox.id).await.unwrap();
    assert_eq!(msgs.len(), 4);
    let body = t.mail.body(&s, &msgs[1]).await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains(dlvr_m.as_str()),
        "the markers are really in the mail"
    );
    let hits = scan(&t.dir, &markers);
    assert!(
        hits.is_empty(),
        "plaintext found at rest after unlock: {hits:?}"
    );
}

#[test]
fn the_scanner_finds_planted_markers_in_every_encoding() {
    let dir =
        std::env::temp_dir().join(format!("coffer-marker-selftest-{}", rand::random::<u64>()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let marker = "MRKSELFTEST0123456789".to_string();
    let plants: Vec<Vec<u8>> = vec![
        format!("..{marker}..").into_bytes(),
        coffer_types::hex(marker.as_bytes()).into_bytes(),
        base64(marker.as_bytes()).into_bytes(),
        base64(format!("a{marker}").as_bytes()).into_bytes(),
        base64(format!("ab{marker}").as_bytes()).into_bytes(),
    ];
    for (i, p) in plants.iter().enumerate() {
        let path = dir.join("sub").join(format!("f{i}"));
        std::fs::write(&path, p).unwrap();
        for j in 0..4 {
            std::fs::write(dir.join(format!("filler{j}")), b"nothing here").unwrap();
        }
        let hits = scan(&dir, std::slice::from_ref(&marker));
        assert!(!hits.is_empty(), "plant {i} not found");
        std::fs::remove_file(&path).unwrap();
    }
    assert!(scan(&dir, &[marker]).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
