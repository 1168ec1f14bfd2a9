//! IMAP protocol tests against a real server on port 0, driving raw bytes, section by
//! section of RFC 9051 and the extensions. Where the RFC has example exchanges, the same
//! commands are replayed.

mod common;

use coffer_imap::server::ImapConfig;
use common::{append, message, server, server_with, Client, PW};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

// --- RFC 9051 §6.1 any state, §6.2 not authenticated -------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn capability_before_and_after_login() {
    let s = server().await;
    let mut c = Client::connect(s.addr).await;
    let caps = c.ok("a1", "CAPABILITY").await;
    let line = &caps[0];
    for cap in [
        "IMAP4rev1",
        "IMAP4rev2",
        "STARTTLS",
        "AUTH=PLAIN",
        "SASL-IR",
        "LITERAL+",
        "IDLE",
        "ENABLE",
        "ID",
    ] {
        assert!(line.contains(cap), "{cap} missing in {line}");
    }
    assert!(
        !line.contains("LOGINDISABLED"),
        "loopback may log in before TLS: {line}"
    );
    let done = c.ok("a2", &format!("LOGIN alice \"{PW}\"")).await;
    assert!(done[0].contains("[CAPABILITY"));
    let caps = c.ok("a3", "CAPABILITY").await;
    for cap in [
        "UIDPLUS",
        "MOVE",
        "CONDSTORE",
        "QRESYNC",
        "SPECIAL-USE",
        "LIST-STATUS",
        "ESEARCH",
        "APPENDLIMIT=",
        "UNSELECT",
        "NAMESPACE",
        "BINARY",
        "MULTIAPPEND",
    ] {
        assert!(
            caps[0].contains(cap),
            "{cap} missing after login: {}",
            caps[0]
        );
    }
    assert!(!caps[0].contains("STARTTLS"));
    c.ok("a4", "NOOP").await;
    let bye = c.cmd("a5", "LOGOUT").await;
    assert!(bye[0].starts_with("* BYE") && bye[1].starts_with("a5 OK"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let s = server().await;
    let mut c = Client::connect(s.addr).await;
    let a = c.cmd("a1", "LOGIN alice wrongpassword").await;
    let b = c.cmd("a2", "LOGIN nosuchuser wrongpassword").await;
    assert_eq!(
        a.last().unwrap().replace("a1", "X"),
        b.last().unwrap().replace("a2", "X")
    );
    assert!(a.last().unwrap().contains("NO [AUTHENTICATIONFAILED]"));
    // Commands that need a login are refused.
    let r = c.cmd("a3", "SELECT INBOX").await;
    assert!(r.last().unwrap().starts_with("a3 BAD"));
}

#[tokio::test(flavor = "multi_thread")]
async fn authenticate_plain_with_and_without_initial_response() {
    use base64::Engine;
    let s = server().await;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{PW}"));
    let mut c = Client::connect(s.addr).await;
    c.ok("a1", &format!("AUTHENTICATE PLAIN {creds}")).await;
    let mut c = Client::connect(s.addr).await;
    c.send(b"a1 AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(format!("{creds}\r\n").as_bytes()).await;
    let r = c.until_tagged("a1").await;
    assert!(r.last().unwrap().starts_with("a1 OK"), "{r:?}");
    let mut c = Client::connect(s.addr).await;
    let bad = base64::engine::general_purpose::STANDARD.encode("\0alice\0wrong");
    let r = c.cmd("a1", &format!("AUTHENTICATE PLAIN {bad}")).await;
    assert!(r.last().unwrap().contains("NO [AUTHENTICATIONFAILED]"));
    let r = c.cmd("a2", "AUTHENTICATE PLAIN !!!notbase64").await;
    assert!(r.last().unwrap().starts_with("a2 BAD"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_login_is_refused_off_loopback_rules_and_starttls_enables_it() {
    let s = server_with(ImapConfig {
        allow_plaintext_login_on_loopback: false,
        ..Default::default()
    })
    .await;
    let mut c = Client::connect(s.addr).await;
    let caps = c.ok("a1", "CAPABILITY").await;
    assert!(
        caps[0].contains("LOGINDISABLED") && !caps[0].contains("AUTH=PLAIN"),
        "{}",
        caps[0]
    );
    let r = c.cmd("a2", &format!("LOGIN alice \"{PW}\"")).await;
    assert!(r.last().unwrap().contains("NO [PRIVACYREQUIRED]"), "{r:?}");
    // STARTTLS, with a pipelined command after it that must be discarded.
    c.send(b"a3 STARTTLS\r\na4 NOOP\r\n").await;
    assert!(c.line().await.starts_with("a3 OK"));
    let inner = c.r.into_inner();
    // Recover the TcpStream: the test client boxed it, so reconnect the TLS on a fresh socket
    // instead would lose the point; use a plain TcpStream from the start for this test.
    drop(inner);
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut r = BufReader::new(tcp);
    let mut greeting = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut r, &mut greeting)
        .await
        .unwrap();
    r.get_mut()
        .write_all(b"a3 STARTTLS\r\na4 NOOP\r\n")
        .await
        .unwrap();
    let mut ok = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut r, &mut ok)
        .await
        .unwrap();
    assert!(ok.starts_with("a3 OK"), "{ok}");
    let tcp = r.into_inner();
    let tls = common::tls_connect(&s, tcp).await;
    let mut c = Client {
        r: BufReader::new(Box::new(tls)),
    };
    let caps = c.ok("b1", "CAPABILITY").await;
    assert!(
        !caps.iter().any(|l| l.starts_with("a4")),
        "pipelined NOOP was discarded: {caps:?}"
    );
    assert!(caps[0].contains("AUTH=PLAIN") && !caps[0].contains("STARTTLS"));
    c.ok("b2", &format!("LOGIN alice \"{PW}\"")).await;
    c.ok("b3", "SELECT INBOX").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn implicit_tls_port_works() {
    let s = server_with(ImapConfig {
        allow_plaintext_login_on_loopback: false,
        ..Default::default()
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(s.tls_addr).await.unwrap();
    let tls = common::tls_connect(&s, tcp).await;
    let mut c = Client {
        r: BufReader::new(Box::new(tls)),
    };
    assert!(c.line().await.starts_with("* OK"));
    c.ok("a1", &format!("LOGIN alice \"{PW}\"")).await;
}

// --- §6.3 authenticated state --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn select_examine_and_status_of_a_fresh_inbox() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    let r = c.ok("a1", "SELECT INBOX").await;
    assert!(has(&r, "* 0 EXISTS"));
    assert!(has(&r, "[UIDVALIDITY "));
    assert!(has(&r, "[UIDNEXT 1]"));
    assert!(has(&r, "[PERMANENTFLAGS ("));
    assert!(has(&r, "[HIGHESTMODSEQ "));
    assert!(r.last().unwrap().contains("[READ-WRITE]"));
    let r = c.ok("a2", "EXAMINE inbox").await;
    assert!(has(&r, "[CLOSED]"), "re-select closes the previous: {r:?}");
    assert!(r.last().unwrap().contains("[READ-ONLY]"));
    let r = c
        .ok(
            "a3",
            "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN SIZE HIGHESTMODSEQ)",
        )
        .await;
    assert!(
        r[0].starts_with("* STATUS \"INBOX\" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY "),
        "{r:?}"
    );
    assert!(r[0].contains("SIZE 0"));
    let r = c.cmd("a4", "SELECT nosuch").await;
    assert!(r.last().unwrap().contains("NO [NONEXISTENT]"));
    let r = c.cmd("a5", "FETCH 1 FLAGS").await;
    assert!(
        r.last().unwrap().starts_with("a5 BAD"),
        "failed SELECT leaves no mailbox selected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_special_use_children_and_status() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    let r = c.ok("a1", "LIST \"\" \"*\"").await;
    for (name, attr) in [
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    ] {
        assert!(
            r.iter()
                .any(|l| l.contains(attr) && l.ends_with(&format!("\"{name}\""))),
            "{name}: {r:?}"
        );
    }
    assert!(has(&r, "\"INBOX\""));
    let r = c.ok("a2", "LIST \"\" \"\"").await;
    assert_eq!(r[0], "* LIST (\\Noselect) \"/\" \"\"");
    c.ok("a3", "CREATE Work/Projects").await;
    let r = c.ok("a4", "LIST \"\" \"%\"").await;
    assert!(
        r.iter()
            .any(|l| l.contains("\\HasChildren") && l.ends_with("\"Work\"")),
        "{r:?}"
    );
    assert!(!has(&r, "Work/Projects"), "% does not cross the delimiter");
    let r = c
        .ok(
            "a5",
            "LIST \"\" \"Work/*\" RETURN (STATUS (MESSAGES UNSEEN) SUBSCRIBED)",
        )
        .await;
    assert!(
        has(&r, "* STATUS \"Work/Projects\" (MESSAGES 0 UNSEEN 0)"),
        "{r:?}"
    );
    assert!(has(&r, "\\Subscribed"));
    let r = c.ok("a6", "LIST (SPECIAL-USE) \"\" \"*\"").await;
    assert_eq!(r.len(), 6, "only the five special-use mailboxes: {r:?}");
    let r = c.ok("a7", "LSUB \"\" \"*\"").await;
    assert!(has(&r, "* LSUB () \"/\" \"Work/Projects\""));
    c.ok("a8", "UNSUBSCRIBE Work/Projects").await;
    let r = c.ok("a9", "LSUB \"\" \"Work/*\"").await;
    assert_eq!(r.len(), 1);
    let r = c.ok("b1", "NAMESPACE").await;
    assert_eq!(r[0], "* NAMESPACE ((\"\" \"/\")) NIL NIL");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_rename_delete_and_international_names() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    // RFC 3501 §5.1.3 modified UTF-7 example.
    c.ok("a1", "CREATE \"~peter/mail/&U,BTFw-/&ZeVnLIqe-\"")
        .await;
    let r = c.ok("a2", "LIST \"\" \"~peter/*\"").await;
    assert!(has(&r, "&U,BTFw-/&ZeVnLIqe-"), "{r:?}");
    let r = c.cmd("a3", "CREATE \"bad&name\"").await;
    assert!(
        r.last().unwrap().starts_with("a3 BAD"),
        "invalid modified UTF-7: {r:?}"
    );
    let r = c.cmd("a4", "CREATE \"&AGE-\"").await;
    assert!(r.last().unwrap().starts_with("a4 BAD"), "{r:?}");
    // With UTF8=ACCEPT names are UTF-8 both ways.
    c.ok("a5", "ENABLE UTF8=ACCEPT").await;
    let r = c.ok("a6", "LIST \"\" \"~peter/*\"").await;
    assert!(r.iter().any(|l| l.contains("台北")), "{r:?}");
    c.ok("a7", "RENAME \"~peter\" \"Paul\"").await;
    let r = c.ok("a8", "LIST \"\" \"*\"").await;
    assert!(
        has(&r, "Paul/mail/台北/日本語") && !has(&r, "~peter"),
        "{r:?}"
    );
    let r = c.cmd("a9", "DELETE Paul").await;
    assert!(r.last().unwrap().contains("HASCHILDREN"), "{r:?}");
    let r = c.cmd("b1", "DELETE INBOX").await;
    assert!(r.last().unwrap().starts_with("b1 NO"));
    let r = c.cmd("b2", "CREATE Sent").await;
    assert!(r.last().unwrap().contains("ALREADYEXISTS"));
    c.ok("b3", "CREATE MyJunk (USE (\\Junk))").await;
    let r = c.ok("b4", "LIST \"\" MyJunk").await;
    assert!(has(&r, "\\Junk"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn append_fetch_and_implicit_seen() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    let msg = message("hello", "Hello, world");
    // A synchronizing literal: the server must ask for it with a continuation.
    c.send(
        format!(
            "a1 APPEND INBOX (\\Flagged) \"07-Feb-1994 21:52:25 -0800\" {{{}}}\r\n",
            msg.len()
        )
        .as_bytes(),
    )
    .await;
    assert!(c.line().await.starts_with('+'));
    c.send(format!("{msg}\r\n").as_bytes()).await;
    let r = c.until_tagged("a1").await;
    assert!(r.last().unwrap().contains("[APPENDUID "), "{r:?}");
    let done = append(&mut c, "INBOX", "", &message("second", "two")).await;
    assert!(
        done.contains("APPENDUID") && done.ends_with(" 2] APPEND completed"),
        "{done}"
    );
    let r = c.cmd("a2", "APPEND Nowhere {1+}\r\nx").await;
    assert!(r.last().unwrap().contains("[TRYCREATE]"));

    c.ok("a3", "SELECT INBOX").await;
    let r = c
        .ok("a4", "FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE UID)")
        .await;
    assert_eq!(
        r[0],
        format!("* 1 FETCH (FLAGS (\\Flagged) INTERNALDATE \"07-Feb-1994 21:52:25 -0800\" RFC822.SIZE {} UID 1)", msg.len())
    );
    let r = c.ok("a5", "FETCH 1 BODY.PEEK[]").await;
    assert_eq!(
        r[0],
        format!("* 1 FETCH (BODY[] {{{}}}\r\n{msg})", msg.len())
    );
    let r = c.ok("a6", "FETCH 1 FLAGS").await;
    assert!(!r[0].contains("\\Seen"), "PEEK does not set \\Seen");
    let r = c.ok("a7", "UID FETCH 1 BODY[]<0.4>").await;
    assert!(
        r[0].contains("BODY[]<0> {4}\r\nFrom") && r[0].contains("\\Seen") && r[0].contains("UID 1"),
        "{r:?}"
    );
    let r = c.ok("a8", "FETCH 1:* (UID RFC822.SIZE)").await;
    assert_eq!(r.len(), 3);
    let r = c.ok("a9", "UID FETCH 2:* FLAGS").await;
    assert_eq!(r.len(), 2, "{r:?}");
    let r = c.ok("b1", "UID FETCH 99:* FLAGS").await;
    assert_eq!(r.len(), 2, "n:* includes the highest UID (RFC 9051 §6.4.8)");
}

#[tokio::test(flavor = "multi_thread")]
async fn multiappend_is_all_or_nothing() {
    let s = server_with(ImapConfig {
        max_message_bytes: 1000,
        ..Default::default()
    })
    .await;
    let mut c = Client::login(s.addr, "alice").await;
    let r = c
        .cmd("a1", "APPEND INBOX {3+}\r\none (\\Seen) {3+}\r\ntwo")
        .await;
    assert!(
        r.last().unwrap().contains("[APPENDUID ") && r.last().unwrap().contains(" 1:2]"),
        "{r:?}"
    );
    let r = c.cmd("a2", "APPEND INBOX {3+}\r\none {}\r\n").await;
    assert!(r.last().unwrap().starts_with("a2 BAD"), "{r:?}");
    let r = c.ok("a3", "STATUS INBOX (MESSAGES)").await;
    assert!(r[0].contains("MESSAGES 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn store_flags_condstore_and_unchangedsince() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    for i in 0..3 {
        append(&mut c, "INBOX", "", &message(&format!("m{i}"), "x")).await;
    }
    c.ok("a1", "SELECT INBOX (CONDSTORE)").await;
    let r = c.ok("a2", "STORE 1:2 +FLAGS (\\Seen $Important)").await;
    assert_eq!(r.len(), 3);
    assert!(
        r[0].starts_with("* 1 FETCH (FLAGS (\\Seen $Important) MODSEQ ("),
        "{r:?}"
    );
    let r = c.ok("a3", "STORE 1 -FLAGS.SILENT (\\Seen)").await;
    assert_eq!(r.len(), 1, "silent: {r:?}");
    let r = c.ok("a4", "FETCH 1 (FLAGS MODSEQ)").await;
    assert!(r[0].contains("FLAGS ($Important)"));
    let modseq: u64 = r[0]
        .split("MODSEQ (")
        .nth(1)
        .unwrap()
        .trim_end_matches("))")
        .parse()
        .unwrap();
    let r = c
        .ok(
            "a5",
            &format!(
                "UID STORE 1,3 (UNCHANGEDSINCE {}) +FLAGS (\\Answered)",
                modseq - 1
            ),
        )
        .await;
    assert!(
        r.last().unwrap().contains("[MODIFIED 1]"),
        "UID 1 changed after that MODSEQ: {r:?}"
    );
    assert!(has(&r, "UID 3"), "message 3 was stored: {r:?}");
    let r = c
        .ok(
            "a6",
            &format!("FETCH 1:* (UID FLAGS) (CHANGEDSINCE {modseq})"),
        )
        .await;
    assert_eq!(r.len(), 2, "only message 3 changed since: {r:?}");
    let r = c.cmd("a7", "STORE 1 +FLAGS (\\Bogus)").await;
    assert!(r.last().unwrap().starts_with("a7 BAD"));
    c.ok("a8", "EXAMINE INBOX").await;
    let r = c.cmd("a9", "STORE 1 +FLAGS (\\Seen)").await;
    assert!(r.last().unwrap().contains("NO [READ-ONLY]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn search_keys_and_esearch() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    append(&mut c, "INBOX", "\\Seen", &message("apples", "red fruit")).await;
    append(
        &mut c,
        "INBOX",
        "\\Flagged",
        &message("bananas", "yellow fruit"),
    )
    .await;
    append(
        &mut c,
        "INBOX",
        "",
        &message(
            "cherries",
            &"small red fruit, much longer body text. ".repeat(10),
        ),
    )
    .await;
    c.ok("a1", "SELECT INBOX").await;
    assert_eq!(c.ok("a2", "SEARCH ALL").await[0], "* SEARCH 1 2 3");
    assert_eq!(c.ok("a3", "SEARCH UNSEEN").await[0], "* SEARCH 2 3");
    assert_eq!(c.ok("a4", "SEARCH FLAGGED").await[0], "* SEARCH 2");
    assert_eq!(
        c.ok("a5", "SEARCH OR SEEN FLAGGED").await[0],
        "* SEARCH 1 2"
    );
    assert_eq!(c.ok("a6", "SEARCH NOT (SEEN)").await[0], "* SEARCH 2 3");
    assert_eq!(c.ok("a7", "UID SEARCH 2:*").await[0], "* SEARCH 2 3");
    assert_eq!(c.ok("a8", "SEARCH LARGER 200").await[0], "* SEARCH 3");
    assert_eq!(
        c.ok("a9", "SEARCH SINCE 1-Jan-2000").await[0],
        "* SEARCH 1 2 3"
    );
    assert_eq!(c.ok("b1", "SEARCH BEFORE 1-Jan-2000").await[0], "* SEARCH");
    assert_eq!(
        c.ok("b2", "SEARCH RETURN (MIN MAX COUNT) UNSEEN").await[0],
        "* ESEARCH (TAG \"b2\") MIN 2 MAX 3 COUNT 2"
    );
    assert_eq!(
        c.ok("b3", "UID SEARCH RETURN () ALL").await[0],
        "* ESEARCH (TAG \"b3\") UID ALL 1:3"
    );
    let r = c.cmd("b4", "SEARCH CHARSET KOI8-R ALL").await;
    assert!(r.last().unwrap().contains("BADCHARSET"));
    let r = c.cmd("b5", "SEARCH FOO").await;
    assert!(r.last().unwrap().starts_with("b5 BAD"));
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_move_and_expunge() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    for i in 0..4 {
        append(&mut c, "INBOX", "", &message(&format!("m{i}"), "x")).await;
    }
    c.ok("a1", "SELECT INBOX").await;
    let r = c.ok("a2", "COPY 1:2 Archive").await;
    assert!(
        r.last().unwrap().contains("[COPYUID ") && r.last().unwrap().contains(" 1,2 1,2]"),
        "{r:?}"
    );
    let r = c.cmd("a3", "COPY 1 Nowhere").await;
    assert!(r.last().unwrap().contains("[TRYCREATE]"));
    let r = c.ok("a4", "MOVE 2 Trash").await;
    assert!(
        r[0].starts_with("* OK [COPYUID ") && has(&r, "* 2 EXPUNGE"),
        "{r:?}"
    );
    let r = c.ok("a5", "FETCH 1:* UID").await;
    assert_eq!(r.len(), 4, "three left: {r:?}");
    c.ok("a6", "STORE 1:3 +FLAGS.SILENT (\\Deleted)").await;
    let r = c.ok("a7", "UID EXPUNGE 4").await;
    assert_eq!(r[0], "* 3 EXPUNGE", "only UID 4: {r:?}");
    let r = c.ok("a8", "EXPUNGE").await;
    assert_eq!(
        &r[..2],
        &["* 2 EXPUNGE".to_string(), "* 1 EXPUNGE".to_string()]
    );
    let r = c.ok("a9", "STATUS Archive (MESSAGES)").await;
    assert!(r[0].contains("MESSAGES 2"));
    c.ok("b1", "SELECT Archive").await;
    c.ok("b2", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    c.ok("b3", "CLOSE").await;
    let r = c.ok("b4", "STATUS Archive (MESSAGES)").await;
    assert!(r[0].contains("MESSAGES 1"), "CLOSE expunges: {r:?}");
    c.ok("b5", "SELECT Archive").await;
    c.ok("b6", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    c.ok("b7", "UNSELECT").await;
    let r = c.ok("b8", "STATUS Archive (MESSAGES DELETED)").await;
    assert!(
        r[0].contains("MESSAGES 1 DELETED 1"),
        "UNSELECT does not: {r:?}"
    );
}

// --- sessions of one user see each other's changes -------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn another_session_sees_appends_flags_and_expunges() {
    let s = server().await;
    let mut a = Client::login(s.addr, "alice").await;
    let mut b = Client::login(s.addr, "alice").await;
    append(&mut b, "INBOX", "", &message("one", "x")).await;
    a.ok("a1", "SELECT INBOX").await;
    b.ok("b1", "SELECT INBOX").await;
    append(&mut b, "INBOX", "", &message("two", "x")).await;
    let r = a.ok("a2", "NOOP").await;
    assert!(has(&r, "* 2 EXISTS"), "{r:?}");
    b.ok("b2", "STORE 1 +FLAGS (\\Flagged)").await;
    let r = a.ok("a3", "NOOP").await;
    assert!(has(&r, "* 1 FETCH (FLAGS (\\Flagged))"), "{r:?}");
    b.ok("b3", "STORE 1 +FLAGS (\\Deleted)").await;
    b.ok("b4", "EXPUNGE").await;
    // No EXPUNGE during a FETCH by sequence number (RFC 9051 §7.5.1)...
    let r = a.ok("a4", "FETCH 1:* FLAGS").await;
    assert!(!has(&r, "EXPUNGE"), "{r:?}");
    // ...but after NOOP.
    let r = a.ok("a5", "NOOP").await;
    assert!(has(&r, "* 1 EXPUNGE"), "{r:?}");
    let r = a.ok("a6", "FETCH 1:* UID").await;
    assert_eq!(r.len(), 2, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_announces_appends_and_deliveries_within_a_second() {
    let s = server().await;
    let mut a = Client::login(s.addr, "alice").await;
    a.ok("a1", "SELECT INBOX").await;
    a.send(b"a2 IDLE\r\n").await;
    assert_eq!(a.line().await, "+ idling");
    let mut b = Client::login(s.addr, "alice").await;
    let start = Instant::now();
    append(&mut b, "INBOX", "", &message("during idle", "x")).await;
    assert_eq!(a.line().await, "* 1 EXISTS");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // Delivery to the user (public-key path) while IDLE.
    let user = s.mail.vault().user_id("alice").unwrap();
    let start = Instant::now();
    s.mail
        .deliver(
            &user,
            None,
            message("delivered", "y").into_bytes(),
            coffer_mail::InternalDate::now(),
        )
        .await
        .unwrap();
    assert_eq!(a.line().await, "* 2 EXISTS");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    a.send(b"DONE\r\n").await;
    assert!(a
        .until_tagged("a2")
        .await
        .last()
        .unwrap()
        .starts_with("a2 OK"));
    let r = a
        .ok("a3", "FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        .await;
    assert!(
        r[0].contains("Subject: delivered"),
        "delivered mail opens: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_hears_of_deliveries_made_by_another_process_within_a_second() {
    let s = server().await;
    let mut a = Client::login(s.addr, "alice").await;
    a.ok("a1", "SELECT INBOX").await;
    a.send(b"a2 IDLE\r\n").await;
    assert_eq!(a.line().await, "+ idling");
    // Another process: its own connection to the same data directory, as `coffer deliver`
    // or the CLI would have; no in-process notification exists for it.
    let other = coffer_store::sqlite::SqliteStore::open(&s.dir).unwrap();
    let pepper = coffer_vault::Pepper::from_bytes(s.pepper);
    let user = s.mail.vault().user_id("alice").unwrap();
    let start = Instant::now();
    coffer_mail::deliver(
        &other,
        &pepper,
        &user,
        None,
        message("from outside", "z").as_bytes(),
        coffer_mail::InternalDate::now(),
    )
    .await
    .unwrap();
    assert_eq!(a.line().await, "* 1 EXISTS");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    a.send(b"DONE\r\n").await;
    a.until_tagged("a2").await;
}

/// Sessions read the store again only when something may have changed (an announcement in
/// this process, another process's commit, or the poll interval passing): a busy session
/// that never sends NOOP must still see every change.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_session_sees_changes_from_here_and_from_other_processes() {
    let s = server().await;
    let mut a = Client::login(s.addr, "alice").await;
    a.ok("a1", "SELECT INBOX").await;
    let mut b = Client::login(s.addr, "alice").await;
    append(&mut b, "INBOX", "", &message("from here", "x")).await;
    // In this process: at the very next command, whatever it is.
    let r = a.ok("a2", "UID SEARCH ALL").await;
    assert!(has(&r, "* 1 EXISTS"), "{r:?}");

    // Another process delivers: seen within the poll interval (500 ms) and the watcher's.
    let other = coffer_store::sqlite::SqliteStore::open(&s.dir).unwrap();
    let pepper = coffer_vault::Pepper::from_bytes(s.pepper);
    let user = s.mail.vault().user_id("alice").unwrap();
    coffer_mail::deliver(
        &other,
        &pepper,
        &user,
        None,
        message("from outside", "z").as_bytes(),
        coffer_mail::InternalDate::now(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let r = a.ok(&format!("s{n}"), "UID SEARCH ALL").await;
        if has(&r, "* 2 EXISTS") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the other process's delivery was not seen: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // Another node locks the account: the busy session ends without a NOOP.
    let vault = coffer_vault::Vault::new(
        std::sync::Arc::new(other),
        std::sync::Arc::new(pepper),
        coffer_vault::VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 1,
            grace: Duration::ZERO,
            recovery_key: None,
        },
    );
    vault.lock_everywhere(&user).await.unwrap();
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        a.send(format!("f{n} UID SEARCH ALL\r\n").as_bytes()).await;
        let l = a.until_tagged_or_bye(&format!("f{n}")).await;
        if l.iter().any(|l| l.starts_with("* BYE")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the lock on another node did not end the session: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_user_are_limited() {
    let s = server_with(ImapConfig {
        max_connections_per_user: 2,
        ..Default::default()
    })
    .await;
    let _a = Client::login(s.addr, "alice").await;
    let _b = Client::login(s.addr, "alice").await;
    let mut c = Client::connect(s.addr).await;
    let r = c.cmd("l1", &format!("LOGIN alice \"{PW}\"")).await;
    assert!(r.last().unwrap().contains("NO [LIMIT]"), "{r:?}");
    // Other users are not affected.
    c.ok("l2", &format!("LOGIN bob \"{PW}\"")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qresync_reports_vanished_and_changed() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    for i in 0..4 {
        append(&mut c, "INBOX", "", &message(&format!("m{i}"), "x")).await;
    }
    c.ok("a1", "ENABLE QRESYNC").await;
    let r = c.ok("a2", "SELECT INBOX").await;
    let uv: u32 = r
        .iter()
        .find(|l| l.contains("UIDVALIDITY"))
        .unwrap()
        .split("UIDVALIDITY ")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let hms: u64 = r
        .iter()
        .find(|l| l.contains("HIGHESTMODSEQ"))
        .unwrap()
        .split("HIGHESTMODSEQ ")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    c.ok("a3", "STORE 2 +FLAGS.SILENT (\\Deleted \\Seen)").await;
    c.ok("a4", "STORE 3 +FLAGS (\\Answered)").await;
    let r = c.ok("a5", "EXPUNGE").await;
    assert!(
        has(&r, "* VANISHED 2"),
        "QRESYNC clients get VANISHED: {r:?}"
    );
    c.ok("a6", "UNSELECT").await;
    let r = c
        .ok("a7", &format!("SELECT INBOX (QRESYNC ({uv} {hms} 1:4))"))
        .await;
    assert!(has(&r, "* VANISHED (EARLIER) 2"), "{r:?}");
    assert!(
        r.iter()
            .any(|l| l.contains("UID 3") && l.contains("\\Answered")),
        "{r:?}"
    );
    let r = c
        .ok(
            "a8",
            &format!("UID FETCH 1:* FLAGS (CHANGEDSINCE {hms} VANISHED)"),
        )
        .await;
    assert!(has(&r, "* VANISHED (EARLIER) 2"), "{r:?}");
}

// --- limits and hostile input ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_commands_get_bad_and_too_many_errors_end_the_session() {
    let s = server_with(ImapConfig {
        max_errors: 5,
        ..Default::default()
    })
    .await;
    let mut c = Client::connect(s.addr).await;
    let r = c.cmd("a1", "FROBNICATE").await;
    assert!(
        r[0].starts_with("a1 BAD") && r[0].contains("unknown command"),
        "{r:?}"
    );
    c.send(b"\r\n").await;
    let r = c.cmd("a2", "LOGIN \"unterminated").await;
    assert!(r[0].starts_with("a2 BAD"));
    let deep = format!("a3 SEARCH {}ALL{}", "(".repeat(100), ")".repeat(100));
    c.send(format!("{deep}\r\n").as_bytes()).await;
    let r = c.until_tagged("a3").await;
    assert!(r[0].contains("BAD"), "{r:?}");
    c.cmd("a4", "NOPE").await;
    c.send(b"a5 NOPE\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("a5 BAD"));
    assert!(c.line().await.starts_with("* BYE"));
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_line_is_cut_with_bye() {
    let s = server_with(ImapConfig {
        max_line: 4096,
        ..Default::default()
    })
    .await;
    let mut c = Client::connect(s.addr).await;
    c.send(&vec![b'a'; 100_000]).await;
    let l = c.line().await;
    assert!(l.starts_with("* BYE") && l.contains("too long"), "{l}");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn literals_over_the_limit_are_refused_before_they_are_read() {
    let s = server_with(ImapConfig {
        max_message_bytes: 1000,
        ..Default::default()
    })
    .await;
    let mut c = Client::login(s.addr, "alice").await;
    // Synchronizing: NO [TOOBIG], no continuation, the session goes on.
    c.send(b"a1 APPEND INBOX {5000}\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("a1 NO [TOOBIG]"), "{l}");
    c.ok("a2", "NOOP").await;
    // Non-synchronizing: BAD and BYE, the connection ends.
    c.send(b"a3 APPEND INBOX {5000+}\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("a3 BAD [TOOBIG]"), "{l}");
    assert!(c.line().await.starts_with("* BYE"));
    // A literal outside APPEND is limited to the line length.
    let mut c = Client::login(s.addr, "alice").await;
    c.send(b"a4 LOGIN {999999}\r\n").await;
    assert!(c.line().await.starts_with("a4 NO [TOOBIG]"));
    c.ok("a5", "STATUS INBOX (MESSAGES)").await;
    let r = c.ok("a6", "STATUS INBOX (MESSAGES)").await;
    assert!(r[0].contains("MESSAGES 0"), "nothing was appended: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnecting_mid_append_leaves_no_message() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    c.send(b"a1 APPEND INBOX {100000+}\r\n").await;
    c.send(&vec![b'x'; 50_000]).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Client::login(s.addr, "alice").await;
    let r = c.ok("a2", "STATUS INBOX (MESSAGES)").await;
    assert!(r[0].contains("MESSAGES 0"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_now_ends_connected_sessions() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    c.ok("a1", "SELECT INBOX").await;
    let user = s.mail.vault().user_id("alice").unwrap();
    assert!(s.mail.vault().lock(&user));
    c.send(b"a2 NOOP\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("* BYE"), "{l}");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn app_passwords_log_in_and_revocation_stops_new_logins() {
    let s = server().await;
    let vault = s.mail.vault().clone();
    let owner = vault
        .login("alice", PW, coffer_vault::Purpose::Account)
        .await
        .unwrap();
    let (id, secret) = vault.add_app_password(&owner, "phone").await.unwrap();
    let mut c = Client::connect(s.addr).await;
    c.ok("a1", &format!("LOGIN alice {}", &*secret)).await;
    c.ok("a2", "SELECT INBOX").await;
    assert!(vault
        .revoke_app_password(owner.user_id(), &id)
        .await
        .unwrap());
    let mut d = Client::connect(s.addr).await;
    let r = d.cmd("b1", &format!("LOGIN alice {}", &*secret)).await;
    assert!(
        r.last().unwrap().contains("NO [AUTHENTICATIONFAILED]"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_throttled() {
    let s = server().await;
    let mut c = Client::connect(s.addr).await;
    for i in 0..3 {
        c.cmd(&format!("t{i}"), "LOGIN alice wrong").await;
    }
    let start = Instant::now();
    c.cmd("t9", "LOGIN alice wrong").await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the fourth failure waits: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_address_are_limited() {
    let s = server_with(ImapConfig {
        max_connections_per_ip: 3,
        ..Default::default()
    })
    .await;
    let _a = Client::connect(s.addr).await;
    let _b = Client::connect(s.addr).await;
    let _c = Client::connect(s.addr).await;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut r = BufReader::new(tcp);
    let mut l = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut r, &mut l)
        .await
        .unwrap();
    assert!(l.starts_with("* BYE"), "{l}");
}

// --- SORT, THREAD (RFC 5256), COMPRESS (RFC 4978), MIME answers -------------------------

fn threaded(subject: &str, id: &str, refs: &str, date: &str) -> String {
    let refs = if refs.is_empty() {
        String::new()
    } else {
        format!("References: {refs}\r\n")
    };
    format!("From: x@example.org\r\nSubject: {subject}\r\nMessage-ID: {id}\r\n{refs}Date: {date}\r\n\r\nbody\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn sort_and_thread() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    append(
        &mut c,
        "INBOX",
        "",
        &threaded("Plans", "<1@x>", "", "Mon, 1 Jan 2024 10:00:00 +0000"),
    )
    .await;
    append(
        &mut c,
        "INBOX",
        "",
        &threaded(
            "Re: Plans",
            "<2@x>",
            "<1@x>",
            "Mon, 1 Jan 2024 12:00:00 +0000",
        ),
    )
    .await;
    append(
        &mut c,
        "INBOX",
        "",
        &threaded("Another", "<3@x>", "", "Sun, 31 Dec 2023 09:00:00 +0000"),
    )
    .await;
    append(
        &mut c,
        "INBOX",
        "",
        &threaded(
            "Re: Plans",
            "<4@x>",
            "<1@x> <2@x>",
            "Tue, 2 Jan 2024 08:00:00 +0000",
        ),
    )
    .await;
    c.ok("a1", "SELECT INBOX").await;
    assert_eq!(
        c.ok("a2", "SORT (DATE) UTF-8 ALL").await[0],
        "* SORT 3 1 2 4"
    );
    assert_eq!(
        c.ok("a3", "SORT (REVERSE DATE) UTF-8 ALL").await[0],
        "* SORT 4 2 1 3"
    );
    assert_eq!(
        c.ok("a4", "SORT (SUBJECT DATE) UTF-8 ALL").await[0],
        "* SORT 3 1 2 4"
    );
    assert_eq!(
        c.ok("a5", "UID SORT (ARRIVAL) UTF-8 NOT SUBJECT Another")
            .await[0],
        "* SORT 1 2 4"
    );
    assert_eq!(
        c.ok("a6", "THREAD REFERENCES UTF-8 ALL").await[0],
        "* THREAD (3)(1 2 4)"
    );
    assert_eq!(
        c.ok("a7", "THREAD ORDEREDSUBJECT UTF-8 ALL").await[0],
        "* THREAD (3)(1 (2)(4))"
    );
    let r = c.cmd("a8", "SORT (DATE) KOI8-R ALL").await;
    assert!(r.last().unwrap().contains("BADCHARSET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compress_deflate_carries_the_session() {
    use std::io::{Read, Write};
    let s = server().await;
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        let n = tcp.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"* OK"));
        tcp.write_all(format!("a1 LOGIN alice \"{PW}\"\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("a1 OK") {
            let n = tcp.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(b"a2 COMPRESS DEFLATE\r\n").unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\r\n") {
            let n = tcp.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            String::from_utf8_lossy(&got).starts_with("a2 OK"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // From here on, raw DEFLATE both ways (an independent implementation: flate2 here).
        let mut comp = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut decomp = flate2::Decompress::new(false);
        let mut send = |tcp: &mut std::net::TcpStream, text: &str| {
            let mut out = Vec::with_capacity(text.len() * 2 + 1024);
            let before = comp.total_in();
            comp.compress_vec(text.as_bytes(), &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            assert_eq!(
                (comp.total_in() - before) as usize,
                text.len(),
                "all input compressed"
            );
            tcp.write_all(&out).unwrap();
        };
        let mut recv_until = |tcp: &mut std::net::TcpStream, needle: &str| -> String {
            let mut plain = Vec::new();
            while !String::from_utf8_lossy(&plain).contains(needle) {
                let n = tcp.read(&mut buf).unwrap_or_else(|e| {
                    panic!(
                        "waiting for {needle:?}: {e}; got {:?}",
                        String::from_utf8_lossy(&plain)
                    )
                });
                assert!(n > 0, "closed; got {}", String::from_utf8_lossy(&plain));
                let mut out = Vec::with_capacity(65536);
                decomp
                    .decompress_vec(&buf[..n], &mut out, flate2::FlushDecompress::None)
                    .unwrap();
                plain.extend_from_slice(&out);
            }
            String::from_utf8_lossy(&plain).into_owned()
        };
        send(&mut tcp, "a3 SELECT INBOX\r\n");
        let r = recv_until(&mut tcp, "a3 OK");
        assert!(r.contains("* 0 EXISTS"), "{r}");
        let big = "x".repeat(20_000);
        send(
            &mut tcp,
            &format!("a4 APPEND INBOX {{{}+}}\r\n{big}\r\n", big.len()),
        );
        let r = recv_until(&mut tcp, "a4 OK");
        assert!(r.contains("APPENDUID"), "{r}");
        send(&mut tcp, "a5 FETCH 1 BODY.PEEK[]\r\n");
        let r = recv_until(&mut tcp, "a5 OK");
        assert!(r.contains(&big), "the body came back through DEFLATE");
        send(&mut tcp, "a6 COMPRESS DEFLATE\r\n");
        let r = recv_until(&mut tcp, "a6 ");
        assert!(r.contains("a6 NO [COMPRESSIONACTIVE]"), "{r}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_bodystructure_and_sections() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    let msg = "From: \"Doe, Jane\" <jane@example.org>\r\nTo: bob@example.org\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--b1--\r\n";
    append(&mut c, "INBOX", "", msg).await;
    c.ok("a1", "SELECT INBOX").await;
    let r = c.ok("a2", "FETCH 1 ENVELOPE").await;
    assert!(r[0].contains("\"Mon, 7 Feb 1994 21:52:25 -0800\" \"=?UTF-8?Q?caf=C3=A9?=\" ((\"Doe, Jane\" NIL \"jane\" \"example.org\"))"), "{r:?}");
    assert!(r[0].contains("\"<m1@example.org>\""), "{r:?}");
    let r = c.ok("a3", "FETCH 1 BODYSTRUCTURE").await;
    assert!(
        r[0].contains("\"mixed\"")
            && r[0]
                .to_ascii_lowercase()
                .contains("\"application\" \"octet-stream\""),
        "{r:?}"
    );
    let r = c
        .ok(
            "a4",
            "FETCH 1 (BODY.PEEK[1] BODY.PEEK[2.MIME] BINARY.PEEK[2] BINARY.SIZE[2])",
        )
        .await;
    assert!(r[0].contains("BODY[1] {5}\r\nhello"), "{r:?}");
    assert!(r[0].contains("BINARY.SIZE[2] 4"), "{r:?}");
    assert!(
        r[0].contains("BINARY[2] ~{4}\r\n\u{0}\u{1}\u{2}\u{3}"),
        "literal8 for binary data: {r:?}"
    );
    let r = c.ok("a5", "SEARCH SUBJECT \"café\"").await;
    assert_eq!(r[0], "* SEARCH 1", "encoded words are decoded for SEARCH");
    let r = c.ok("a6", "SEARCH FROM jane BODY hello").await;
    assert_eq!(r[0], "* SEARCH 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_error_is_a_no_and_the_server_keeps_serving() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    append(&mut c, "INBOX", "", &message("doomed", "x")).await;
    c.ok("a1", "SELECT INBOX").await;
    // The blob vanishes from the store underneath the server.
    assert_eq!(remove_every_blob(&s.dir), 1);
    let r = c.cmd("a2", "FETCH 1 BODY.PEEK[]").await;
    assert!(r.last().unwrap().starts_with("a2 NO [SERVERBUG]"), "{r:?}");
    c.ok("a3", "NOOP").await;
    c.ok("a4", "FETCH 1 FLAGS").await;
    let mut other = Client::login(s.addr, "bob").await;
    other.ok("b1", "SELECT INBOX").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_login_throttle_is_shared_with_other_front_ends() {
    let s = server().await;
    // Failures recorded elsewhere (the panel's sign-in uses the same vault throttle).
    let user = s.mail.vault().user_id("alice").unwrap();
    let other_addr: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    for _ in 0..3 {
        s.mail.vault().throttle().failed(Some(&user), other_addr);
    }
    let mut c = Client::connect(s.addr).await;
    let start = Instant::now();
    c.ok("a1", &format!("LOGIN alice \"{PW}\"")).await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "IMAP waited for the panel's failures: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_now_on_another_node_ends_sessions_here() {
    let s = server().await;
    let mut busy = Client::login(s.addr, "alice").await;
    busy.ok("a1", "SELECT INBOX").await;
    let mut idle = Client::login(s.addr, "alice").await;
    idle.ok("b1", "SELECT INBOX").await;
    idle.send(b"b2 IDLE\r\n").await;
    assert_eq!(idle.line().await, "+ idling");
    // Another node (its own vault over the same store) presses "lock now".
    let other = coffer_vault::Vault::new(
        std::sync::Arc::new(coffer_store::sqlite::SqliteStore::open(&s.dir).unwrap()),
        std::sync::Arc::new(coffer_vault::Pepper::from_bytes(s.pepper)),
        coffer_vault::VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 1,
            grace: Duration::ZERO,
            recovery_key: None,
        },
    );
    let user = other.user_id("alice").unwrap();
    let start = Instant::now();
    other.lock_everywhere(&user).await.unwrap();
    assert!(
        idle.line().await.starts_with("* BYE"),
        "the IDLE session ends"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    busy.send(b"a2 NOOP\r\n").await;
    assert!(
        busy.line().await.starts_with("* BYE"),
        "the other session ends at its next command"
    );
    assert!(
        !s.mail.vault().registry().is_unlocked(&user),
        "keys wiped on this node"
    );
    // A fresh login afterwards works.
    Client::login(s.addr, "alice").await;
}

/// Removes every sealed blob of the test server's embedded store, the files under
/// `blobs/` and the small ones inside the database; returns how many there were.
fn remove_every_blob(dir: &std::path::Path) -> usize {
    let files = blob_files(dir);
    for f in &files {
        std::fs::remove_file(f).unwrap();
    }
    let db = rusqlite::Connection::open(dir.join("coffer.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    files.len() + db.execute("DELETE FROM blobs", []).unwrap()
}

/// Paths of every sealed blob file in the test server's data directory.
fn blob_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir.join("blobs")).unwrap().flatten() {
        if shard.file_name() == "tmp" {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_and_bodystructure_are_answered_from_sealed_metadata_alone() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    // Every message of the MIME corpus but the empty file (APPEND refuses it).
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    files.sort();
    let mut raws = Vec::new();
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        // literal8 (RFC 3516) for a message with NUL bytes.
        let tilde = if raw.contains(&0) { "~" } else { "" };
        let lit = format!("ap APPEND INBOX {tilde}{{{}+}}\r\n", raw.len());
        c.send(&[lit.as_bytes(), &raw, b"\r\n"].concat()).await;
        let r = c.until_tagged("ap").await;
        assert!(r.last().unwrap().starts_with("ap OK"), "{f:?}: {r:?}");
        raws.push(raw);
    }
    c.ok("a1", "SELECT INBOX").await;
    // The bodies are gone from the store: what still answers comes from the metadata.
    assert_eq!(remove_every_blob(&s.dir), raws.len());
    for (i, raw) in raws.iter().enumerate() {
        let seq = i + 1;
        let r = c
            .ok("a2", &format!("FETCH {seq} (ENVELOPE BODYSTRUCTURE BODY)"))
            .await;
        let want = format!(
            "* {seq} FETCH (ENVELOPE {} BODYSTRUCTURE {} BODY {})",
            String::from_utf8_lossy(&coffer_imap::mime::envelope(raw)),
            String::from_utf8_lossy(&coffer_imap::mime::body_structure(raw, true)),
            String::from_utf8_lossy(&coffer_imap::mime::body_structure(raw, false)),
        );
        assert_eq!(r[0], want, "{:?}", files[i]);
    }
    let r = c.cmd("a3", "FETCH 1 BODY.PEEK[]").await;
    assert!(
        r.last().unwrap().starts_with("a3 NO"),
        "the body is gone: {r:?}"
    );
}

fn big_message(line_end: &str, size: usize) -> Vec<u8> {
    let mut raw =
        format!("Subject: big{line_end}From: a@example.org{line_end}{line_end}").into_bytes();
    let mut n = 0;
    while raw.len() < size {
        raw.extend_from_slice(format!("line {n} of a large body{line_end}").as_bytes());
        n += 1;
    }
    raw
}

/// Reads one untagged FETCH response whose only item is a literal and returns its bytes.
async fn read_fetch_literal(c: &mut Client, prefix: &str) -> Vec<u8> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut head = Vec::new();
    c.r.read_until(b'\n', &mut head).await.unwrap();
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with(prefix), "{head}");
    let open = head.rfind('{').unwrap();
    let n: usize = head[open + 1..head.len() - 3].parse().unwrap();
    let mut lit = vec![0; n];
    c.r.read_exact(&mut lit).await.unwrap();
    let mut tail = Vec::new();
    c.r.read_until(b'\n', &mut tail).await.unwrap();
    assert_eq!(tail, b")\r\n");
    lit
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_body_streams_exactly_and_bare_lf_bodies_are_still_converted() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    let crlf = big_message("\r\n", 3 * 1024 * 1024 + 17);
    let bare = big_message("\n", 1024 * 1024);
    for raw in [&crlf, &bare] {
        let lit = format!("ap APPEND INBOX {{{}+}}\r\n", raw.len());
        c.send(&[lit.as_bytes(), raw.as_slice(), b"\r\n"].concat())
            .await;
        let r = c.until_tagged("ap").await;
        assert!(r.last().unwrap().starts_with("ap OK"), "{r:?}");
    }
    c.ok("a1", "SELECT INBOX").await;
    c.send(b"a2 FETCH 1 BODY.PEEK[]\r\n").await;
    assert_eq!(
        read_fetch_literal(&mut c, "* 1 FETCH (BODY[] {").await,
        crlf
    );
    assert!(c.line().await.starts_with("a2 OK"));
    c.send(b"a3 FETCH 1 RFC822\r\n").await;
    let lit = {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut head = Vec::new();
        c.r.read_until(b'\n', &mut head).await.unwrap();
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("* 1 FETCH (RFC822 {"), "{head}");
        let n: usize = head[head.rfind('{').unwrap() + 1..head.len() - 3]
            .parse()
            .unwrap();
        let mut lit = vec![0; n];
        c.r.read_exact(&mut lit).await.unwrap();
        let rest = c.line().await;
        assert!(
            rest.contains("FLAGS (\\Seen)"),
            "RFC822 sets \\Seen: {rest}"
        );
        lit
    };
    assert_eq!(lit, crlf);
    assert!(c.line().await.starts_with("a3 OK"));
    let r = c.ok("a4", "FETCH 1 BODY.PEEK[]<10.20>").await;
    assert_eq!(
        r[0],
        format!(
            "* 1 FETCH (BODY[]<10> {{20}}\r\n{})",
            String::from_utf8_lossy(&crlf[10..30])
        )
    );
    // The bare-LF message cannot stream as stored: it is sent with CRLF line ends.
    c.send(b"a5 FETCH 2 BODY.PEEK[]\r\n").await;
    let got = read_fetch_literal(&mut c, "* 2 FETCH (BODY[] {").await;
    assert_eq!(got, coffer_imap::mime::whole_message(&bare).into_owned());
    assert_eq!(
        got.len(),
        bare.len() + bare.iter().filter(|b| **b == b'\n').count()
    );
    assert!(c.line().await.starts_with("a5 OK"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_large_body_ends_the_connection_and_never_sends_wrong_bytes() {
    let s = server().await;
    let mut c = Client::login(s.addr, "alice").await;
    let raw = big_message("\r\n", 2 * 1024 * 1024);
    let lit = format!("ap APPEND INBOX {{{}+}}\r\n", raw.len());
    c.send(&[lit.as_bytes(), raw.as_slice(), b"\r\n"].concat())
        .await;
    assert!(c
        .until_tagged("ap")
        .await
        .last()
        .unwrap()
        .starts_with("ap OK"));
    c.ok("a1", "SELECT INBOX").await;
    let files = blob_files(&s.dir);
    assert_eq!(files.len(), 1);
    let mut sealed = std::fs::read(&files[0]).unwrap();
    let at = sealed.len() * 3 / 4;
    sealed[at] ^= 0x01;
    std::fs::write(&files[0], &sealed).unwrap();
    c.send(b"a2 FETCH 1 BODY.PEEK[]\r\n").await;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut head = Vec::new();
    c.r.read_until(b'\n', &mut head).await.unwrap();
    assert!(head.starts_with(b"* 1 FETCH (BODY[] {"), "{head:?}");
    let mut got = Vec::new();
    let read = tokio::time::timeout(common::TIMEOUT, c.r.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closes the connection");
    assert!(got.len() < raw.len(), "the literal was cut short");
    assert!(
        raw.starts_with(&got),
        "every byte sent was the message's own"
    );
    // The server goes on serving.
    let mut again = Client::login(s.addr, "alice").await;
    again.ok("b1", "SELECT INBOX").await;
}
