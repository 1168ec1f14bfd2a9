//! A real IMAP server on 127.0.0.1 port 0 over a fresh embedded store, and a small raw
//! protocol client for the tests to drive it with exact bytes.
#![allow(dead_code)]

use coffer_imap::server::{serve, Ctx, ImapConfig, Listener};
use coffer_mail::Mail;
use coffer_store::sqlite::SqliteStore;
use coffer_types::SecurityMode;
use coffer_vault::{Pepper, Vault, VaultConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const PW: &str = "correct horse battery";

pub struct Server {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub mail: Mail,
    pub ctx: Arc<Ctx>,
    pub cert_der: Vec<u8>,
    pub pepper: [u8; 32],
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn server_with(config: ImapConfig) -> Server {
    let dir = std::env::temp_dir().join(format!("coffer-imap-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir).unwrap();
    let pepper: [u8; 32] = rand::random();
    let vault = Arc::new(Vault::new(
        Arc::new(store),
        Arc::new(Pepper::from_bytes(pepper)),
        VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 2,
            grace: Duration::from_secs(60),
            recovery_key: None,
        },
    ));
    let mail = Mail::new(vault).with_max_message_bytes(config.max_message_bytes);
    drop(
        mail.create_user("alice", PW, SecurityMode::High)
            .await
            .unwrap(),
    );
    drop(
        mail.create_user("bob", PW, SecurityMode::High)
            .await
            .unwrap(),
    );

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = coffer_imap::server::tls_acceptor(&cert_path, &key_path).unwrap();

    let ctx = Ctx::new(mail.clone(), config, Some(tls));
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(
        ctx.clone(),
        vec![
            Listener {
                socket: plain,
                implicit_tls: false,
            },
            Listener {
                socket: tls_listener,
                implicit_tls: true,
            },
        ],
        rx,
    ));
    Server {
        dir,
        addr,
        tls_addr,
        mail,
        ctx,
        cert_der: cert.cert.der().to_vec(),
        pepper,
        _stop: stop,
    }
}

pub async fn server() -> Server {
    server_with(ImapConfig::default()).await
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A raw IMAP client: send exact bytes, read lines.
pub struct Client {
    pub r: BufReader<Box<dyn Stream>>,
}

pub const TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut c = Client {
            r: BufReader::new(Box::new(s)),
        };
        let greeting = c.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
        self.r.get_mut().flush().await.unwrap();
    }

    /// One line (CRLF removed); literals inside are read as part of the text.
    pub async fn line(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let mut l = Vec::new();
            let n = tokio::time::timeout(TIMEOUT, self.r.read_until(b'\n', &mut l))
                .await
                .expect("server answered in time")
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&l);
            // A literal at the end of the line: read its bytes and continue.
            let trimmed = l.strip_suffix(b"\r\n").unwrap_or(&l);
            if let Some(open) = trimmed.iter().rposition(|c| *c == b'{') {
                if trimmed.ends_with(b"}") {
                    if let Ok(n) = std::str::from_utf8(&trimmed[open + 1..trimmed.len() - 1])
                        .unwrap_or("x")
                        .parse::<usize>()
                    {
                        let mut lit = vec![0; n];
                        self.r.read_exact(&mut lit).await.unwrap();
                        out.extend_from_slice(&lit);
                        continue;
                    }
                }
            }
            break;
        }
        let s = String::from_utf8_lossy(&out).into_owned();
        s.strip_suffix("\r\n").unwrap_or(&s).to_string()
    }

    /// Sends `tag command` and returns all lines up to and including the tagged one.
    pub async fn cmd(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until_tagged(tag).await
    }

    pub async fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            if l.is_empty() && lines.last().is_some_and(|x: &String| x.is_empty()) {
                panic!("connection closed; got {lines:?}");
            }
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
    }

    /// Like `until_tagged`, but also returns at an untagged BYE or when the server closes.
    pub async fn until_tagged_or_bye(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            let done = l.is_empty() || l.starts_with("* BYE") || l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
    }

    pub async fn ok(&mut self, tag: &str, command: &str) -> Vec<String> {
        let lines = self.cmd(tag, command).await;
        let last = lines.last().unwrap();
        assert!(
            last.starts_with(&format!("{tag} OK")),
            "{command}: {lines:?}"
        );
        lines
    }

    pub async fn login(addr: SocketAddr, user: &str) -> Client {
        let mut c = Client::connect(addr).await;
        c.ok("l1", &format!("LOGIN {user} \"{PW}\"")).await;
        c
    }

    /// True if the server closed the connection (EOF) within the timeout.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(TIMEOUT, self.r.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A TLS client that trusts exactly the test server's certificate.
pub async fn tls_connect(
    server: &Server,
    stream: TcpStream,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(
            server.cert_der.clone(),
        ))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            stream,
        )
        .await
        .unwrap()
}

pub fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <{subject}@example.org>\r\n\r\n{body}\r\n"
    )
}

/// APPENDs with a LITERAL+ literal and returns the tagged line.
pub async fn append(c: &mut Client, mailbox: &str, flags: &str, msg: &str) -> String {
    c.send(
        format!(
            "ap APPEND {mailbox} ({flags}) {{{}+}}\r\n{msg}\r\n",
            msg.len()
        )
        .as_bytes(),
    )
    .await;
    let lines = c.until_tagged("ap").await;
    lines.last().unwrap().clone()
}
