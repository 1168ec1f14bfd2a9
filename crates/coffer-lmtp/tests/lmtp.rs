//! LMTP protocol tests (RFC 2033, RFC 3030 CHUNKING, RFC 2920 PIPELINING) against a real
//! server on 127.0.0.1 port 0 and on a unix socket, over a fresh embedded store. What is
//! delivered is read back with the recipient's keys.

use coffer_lmtp::{serve_tcp, serve_unix, LmtpConfig};
use coffer_mail::Mail;
use coffer_store::sqlite::SqliteStore;
use coffer_types::{MailboxName, SecurityMode};
use coffer_vault::{Pepper, Purpose, Vault, VaultConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

const PW: &str = "correct horse battery";

struct T {
    dir: PathBuf,
    mail: Mail,
    addr: std::net::SocketAddr,
    socket: PathBuf,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for T {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn server(config: LmtpConfig) -> T {
    let dir = std::env::temp_dir().join(format!("coffer-lmtp-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir).unwrap();
    let vault = Arc::new(Vault::new(
        Arc::new(store),
        Arc::new(Pepper::from_bytes(rand::random())),
        VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 2,
            grace: Duration::ZERO,
            recovery_key: None,
        },
    ));
    let mail = Mail::new(vault).with_max_message_bytes(config.max_message_bytes);
    for u in ["alice", "bob"] {
        drop(mail.create_user(u, PW, SecurityMode::High).await.unwrap());
    }
    let s = mail
        .vault()
        .login("alice", PW, Purpose::Mail)
        .await
        .unwrap();
    mail.create_mailbox(&s, &MailboxName::new("lists").unwrap())
        .await
        .unwrap();
    drop(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = dir.join("lmtp.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let config = Arc::new(config);
    tokio::spawn(serve_tcp(
        mail.clone(),
        config.clone(),
        listener,
        rx.clone(),
    ));
    tokio::spawn(serve_unix(mail.clone(), config, unix, rx));
    T {
        dir,
        mail,
        addr,
        socket,
        _stop: stop,
    }
}

fn config() -> LmtpConfig {
    LmtpConfig {
        hostname: "mx.test".into(),
        local_domains: vec!["example.org".into()],
        max_message_bytes: 100_000,
        ..Default::default()
    }
}

struct C<S> {
    r: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> C<S> {
    async fn new(s: S) -> Self {
        let mut c = C {
            r: BufReader::new(s),
        };
        assert!(c.line().await.starts_with("220 "));
        c
    }
    async fn send(&mut self, b: &[u8]) {
        self.r.get_mut().write_all(b).await.unwrap();
        self.r.get_mut().flush().await.unwrap();
    }
    async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut l))
            .await
            .expect("reply in time")
            .unwrap();
        l.trim_end().to_string()
    }
    /// Reads one (possibly multi-line) reply.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line().await;
            let more = l.len() > 3 && l.as_bytes()[3] == b'-';
            all.push_str(&l);
            if !more {
                return all;
            }
            all.push('\n');
        }
    }
    async fn cmd(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes()).await;
        self.reply().await
    }
}

async fn tcp(t: &T) -> C<tokio::net::TcpStream> {
    C::new(tokio::net::TcpStream::connect(t.addr).await.unwrap()).await
}

async fn inbox_of(t: &T, user: &str, mailbox: &str) -> Vec<Vec<u8>> {
    let s = t.mail.vault().login(user, PW, Purpose::Mail).await.unwrap();
    let mb = t
        .mail
        .find_mailbox(&s, &MailboxName::new(mailbox).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    for m in t.mail.messages(&s, mb.id).await.unwrap() {
        out.push(t.mail.body(&s, &m).await.unwrap().to_vec());
    }
    out
}

const MSG: &str = "From: sender@remote.test\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\nfirst line\r\n.leading dot\r\nlast line\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn lhlo_advertises_the_extensions_and_order_is_enforced() {
    let t = server(config()).await;
    let mut c = tcp(&t).await;
    assert!(c.cmd("HELO x").await.starts_with("500 5.5.1"));
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("503 5.5.1"));
    let r = c.cmd("LHLO client.test").await;
    for ext in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SIZE 100000",
        "CHUNKING",
    ] {
        assert!(r.contains(ext), "{ext}: {r}");
    }
    assert!(c
        .cmd("RCPT TO:<alice@example.org>")
        .await
        .starts_with("503"));
    assert!(c.cmd("DATA").await.starts_with("503"));
    assert!(c.cmd("VRFY alice").await.starts_with("252"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert!(c.cmd("FROB").await.starts_with("500 5.5.1"));
    assert!(c.cmd("MAIL FROM:bad").await.starts_with("501 5.5.4"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_transaction_answers_once_per_accepted_recipient() {
    let t = server(config()).await;
    let mut c = tcp(&t).await;
    c.cmd("LHLO client.test").await;
    // Everything in one write, as PIPELINING allows.
    let dotted = MSG.replace("\r\n.leading", "\r\n..leading");
    c.send(
        b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<BOB@example.org>\r\nRCPT TO:<alice@elsewhere.test>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("550 5.1.1"), "unknown user");
    assert!(
        c.reply().await.starts_with("250 2.1.5"),
        "case-insensitive user"
    );
    assert!(
        c.reply().await.starts_with("550 5.1.2"),
        "not a local domain"
    );
    assert!(c.reply().await.starts_with("354"));
    c.send(format!("{dotted}.\r\n").as_bytes()).await;
    let a = c.reply().await;
    let b = c.reply().await;
    assert!(a.starts_with("250 2.0.0 <alice@example.org>"), "{a}");
    assert!(b.starts_with("250 2.0.0 <BOB@example.org>"), "{b}");
    assert!(
        c.cmd("NOOP").await.starts_with("250"),
        "exactly two replies"
    );

    for (user, rcpt) in [("alice", "alice@example.org"), ("bob", "BOB@example.org")] {
        let got = inbox_of(&t, user, "INBOX").await;
        assert_eq!(got.len(), 1);
        let text = String::from_utf8(got[0].clone()).unwrap();
        assert!(
            text.starts_with("Return-Path: <sender@remote.test>\r\n"),
            "{text}"
        );
        assert!(text.contains(&format!("Delivered-To: {rcpt}\r\n")));
        assert!(text.contains(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Coffer) with LMTP id "
        ));
        assert!(
            text.ends_with(MSG),
            "the message is byte-identical after the added headers: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_chunks_and_size_limits() {
    let t = server(config()).await;
    let mut c = tcp(&t).await;
    c.cmd("LHLO client.test").await;
    c.cmd("MAIL FROM:<s@remote.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    let (a, b) = MSG.split_at(20);
    c.send(format!("BDAT {}\r\n{a}", a.len()).as_bytes()).await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    c.send(format!("BDAT {} LAST\r\n{b}", b.len()).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 <alice@example.org>"));
    let got = inbox_of(&t, "alice", "INBOX").await;
    assert!(String::from_utf8_lossy(&got[0]).ends_with(MSG));

    // SIZE announced too big.
    assert!(c
        .cmd("MAIL FROM:<s@remote.test> SIZE=200000")
        .await
        .starts_with("552 5.3.4"));
    // DATA over the limit: 552 for each recipient, nothing delivered.
    c.cmd("MAIL FROM:<s@remote.test> SIZE=100").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.org>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    let big = "x".repeat(998);
    let mut data = String::from("Subject: big\r\n\r\n");
    for _ in 0..120 {
        data.push_str(&big);
        data.push_str("\r\n");
    }
    c.send(format!("{data}.\r\n").as_bytes()).await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    assert!(c.reply().await.starts_with("552 5.3.4"));
    // One line longer than the whole limit, in DATA: refused the same way.
    c.cmd("MAIL FROM:<s@remote.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    let long = "y".repeat(350_000);
    c.send(format!("Subject: long\r\n\r\n{long}\r\n.\r\n").as_bytes())
        .await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    // A message just under the limit still goes through, dot-stuffed lines included.
    c.cmd("MAIL FROM:<s@remote.test>").await;
    c.cmd("RCPT TO:<bob@example.org>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    let fits = format!("Subject: fits\r\n\r\n..dot\r\n{}\r\n", "z".repeat(99_000));
    c.send(format!("{fits}.\r\n").as_bytes()).await;
    assert!(c.reply().await.starts_with("250"));
    // BDAT over the limit.
    c.cmd("MAIL FROM:<s@remote.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.send(format!("BDAT {} LAST\r\n{data}", data.len()).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    assert!(
        c.cmd("NOOP").await.starts_with("250"),
        "the session goes on"
    );
    assert_eq!(inbox_of(&t, "alice", "INBOX").await.len(), 1);
    let bob = inbox_of(&t, "bob", "INBOX").await;
    assert_eq!(bob.len(), 1);
    assert!(
        bob[0].ends_with(format!("\r\n.dot\r\n{}\r\n", "z".repeat(99_000)).as_bytes()),
        "dot-stuffing undone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn detail_delivers_into_the_named_folder_if_it_exists() {
    let t = server(config()).await;
    let mut c = tcp(&t).await;
    c.cmd("LHLO client.test").await;
    for rcpt in ["alice+lists@example.org", "alice+nosuchfolder@example.org"] {
        c.cmd("MAIL FROM:<s@remote.test>").await;
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
        c.cmd("DATA").await;
        c.send(format!("{MSG}.\r\n").as_bytes()).await;
        assert!(c.reply().await.starts_with("250"));
    }
    assert_eq!(inbox_of(&t, "alice", "lists").await.len(), 1);
    assert_eq!(inbox_of(&t, "alice", "INBOX").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_recipient_limits_and_long_lines() {
    let t = server(LmtpConfig {
        quota_bytes: 1000,
        max_recipients: 2,
        ..config()
    })
    .await;
    let mut c = tcp(&t).await;
    c.cmd("LHLO client.test").await;
    c.cmd("MAIL FROM:<s@remote.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.org>").await;
    assert!(c
        .cmd("RCPT TO:<alice@example.org>")
        .await
        .starts_with("452 4.5.3"));
    c.cmd("DATA").await;
    c.send(format!("{MSG}.\r\n").as_bytes()).await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    // The stored (padded, at least 1 KiB) size of one message already fills the 1000-byte quota.
    c.cmd("MAIL FROM:<s@remote.test>").await;
    let r = c.cmd("RCPT TO:<alice@example.org>").await;
    assert!(r.starts_with("452 4.2.2"), "over quota is temporary: {r}");
    let long = format!("RCPT TO:<{}@example.org>", "a".repeat(1000));
    assert!(c.cmd(&long).await.starts_with("500 5.5.2"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_data_delivers_nothing() {
    let t = server(config()).await;
    let mut c = tcp(&t).await;
    c.cmd("LHLO client.test").await;
    c.cmd("MAIL FROM:<s@remote.test>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: cut\r\n\r\nhalf a messa").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(inbox_of(&t, "alice", "INBOX").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_and_bare_lf() {
    let t = server(config()).await;
    let mut c = C::new(tokio::net::UnixStream::connect(&t.socket).await.unwrap()).await;
    c.cmd("LHLO local").await;
    c.cmd("MAIL FROM:<>").await;
    assert!(c
        .cmd("RCPT TO:<alice@example.org>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: lf\n\nbare\nline feeds\n.\n").await;
    assert!(c.reply().await.starts_with("250"));
    let got = inbox_of(&t, "alice", "INBOX").await;
    let text = String::from_utf8(got[0].clone()).unwrap();
    assert!(text.starts_with("Return-Path: <>\r\n"));
    assert!(
        text.ends_with("Subject: lf\r\n\r\nbare\r\nline feeds\r\n"),
        "{text:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_encrypts_lmtp_over_tcp() {
    let t = server(config()).await;
    // A TLS-capable listener beside the plain one.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(coffer_lmtp::serve_tcp_with_tls(
        t.mail.clone(),
        Arc::new(config()),
        listener,
        Some(acceptor),
        rx,
    ));

    let mut c = C::new(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
    assert!(c.cmd("LHLO client.test").await.contains("STARTTLS"));
    // A command pipelined after STARTTLS must be discarded.
    c.send(b"STARTTLS\r\nNOOP\r\n").await;
    assert!(c.reply().await.starts_with("220 2.0.0"));
    let raw = c.r.into_inner();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            raw,
        )
        .await
        .unwrap();
    let mut c = C {
        r: BufReader::new(tls),
    };
    let lhlo = c.cmd("LHLO client.test").await;
    assert!(
        lhlo.starts_with("250-"),
        "no NOOP answer leaked from before TLS: {lhlo}"
    );
    assert!(!lhlo.contains("STARTTLS"), "not offered twice");
    c.cmd("MAIL FROM:<s@remote.test>").await;
    assert!(c
        .cmd("RCPT TO:<alice@example.org>")
        .await
        .starts_with("250"));
    c.cmd("DATA").await;
    c.send(format!("{MSG}.\r\n").as_bytes()).await;
    assert!(c.reply().await.starts_with("250"));
    assert_eq!(inbox_of(&t, "alice", "INBOX").await.len(), 1);
    // The plain listener without TLS configured does not offer it.
    let mut p = tcp(&t).await;
    assert!(!p.cmd("LHLO x").await.contains("STARTTLS"));
    assert!(p.cmd("STARTTLS").await.starts_with("502"));
}
