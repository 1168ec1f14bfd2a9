//! A real panel on 127.0.0.1 port 0 over TLS with a fresh embedded store, and a small
//! browser-like client (reqwest with the test certificate as its only root, one cookie,
//! no automatic redirects) for the tests to drive it form by form.
#![allow(dead_code)]

use coffer_mail::Mail;
use coffer_panel::{PanelConfig, PanelCtx, SESSION_COOKIE, serve};
use coffer_store::sqlite::SqliteStore;
use coffer_types::SecurityMode;
use coffer_vault::{Pepper, RecoveryPublicKey, Vault, VaultConfig};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const PW: &str = "correct horse battery";

pub struct Server {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub mail: Mail,
    pub ctx: Arc<PanelCtx>,
    pub cert_der: Vec<u8>,
    pub stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default)]
pub struct Options {
    pub config: PanelConfig,
    pub recovery_key: bool,
}

pub async fn server() -> Server {
    server_with(Options::default()).await
}

pub async fn server_with(opts: Options) -> Server {
    let dir = std::env::temp_dir().join(format!("coffer-panel-test-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir).unwrap();
    let recovery_key = opts.recovery_key.then(|| {
        let k = coffer_vault::recovery::generate();
        RecoveryPublicKey::parse(&k.public).unwrap()
    });
    let vault = Arc::new(Vault::new(
        Arc::new(store),
        Arc::new(Pepper::from_bytes(rand::random())),
        VaultConfig {
            kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            argon2_concurrency: 2,
            grace: Duration::ZERO,
            recovery_key,
        },
    ));
    let mail = Mail::new(vault);
    drop(
        mail.create_user("alice", PW, SecurityMode::High)
            .await
            .unwrap(),
    );

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_der = cert.cert.der().to_vec();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls_pki_types::CertificateDer::from(cert_der.clone())],
            key,
        )
        .unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));

    let ctx = Arc::new(PanelCtx::new(mail.clone(), opts.config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(ctx.clone(), listener, tls, rx));
    Server {
        dir,
        addr,
        mail,
        ctx,
        cert_der,
        stop,
    }
}

/// One answer: status, headers, body text.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The CSRF token of the first form on the page.
    pub fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let i = self.body.find(marker).expect("page has a CSRF field") + marker.len();
        let j = self.body[i..].find('"').unwrap();
        self.body[i..i + j].to_string()
    }

    /// The text of the element with this id (a secret shown once).
    pub fn element_text(&self, id: &str) -> String {
        let marker = format!("id=\"{id}\">");
        let i = self.body.find(&marker).expect("element present") + marker.len();
        let j = self.body[i..].find('<').unwrap();
        self.body[i..i + j].to_string()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    #[track_caller]
    pub fn assert(&self, status: u16, contains: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body:\n{}",
            self.body
        );
        assert!(
            self.body.contains(contains),
            "body lacks {contains:?}:\n{}",
            self.body
        );
    }
}

/// A browser: one cookie jar slot, no redirects followed.
pub struct Browser {
    client: reqwest::Client,
    base: String,
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new(s: &Server) -> Browser {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_der(&s.cert_der).unwrap())
            .resolve("localhost", s.addr)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Browser {
            client,
            base: format!("https://localhost:{}", s.addr.port()),
            cookie: None,
        }
    }

    async fn finish(&mut self, res: reqwest::Response) -> Page {
        let status = res.status();
        let headers = res.headers().clone();
        if let Some(c) = headers.get("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, _) = c.split_once(';').unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            assert_eq!(name, SESSION_COOKIE);
            self.cookie = if value.is_empty() {
                None
            } else {
                Some(value.to_string())
            };
        }
        let body = res.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    fn with_cookie(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => r.header("cookie", format!("{SESSION_COOKIE}={c}")),
            None => r,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let r = self.with_cookie(self.client.get(format!("{}{path}", self.base)));
        let res = r.send().await.unwrap();
        self.finish(res).await
    }

    pub async fn post_raw(&mut self, path: &str, body: Vec<u8>) -> Page {
        let r = self.with_cookie(
            self.client
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        );
        let res = r.send().await.unwrap();
        self.finish(res).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.post_raw(path, body.into_bytes()).await
    }

    /// GETs `page` and posts its form with `fields` plus the page's CSRF token.
    pub async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let token = self.get(page).await.csrf();
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }

    /// Signs in and checks the redirect to the overview.
    pub async fn sign_in(&mut self, user: &str, password: &str) {
        let p = self
            .submit(
                "/login",
                "/login",
                &[("username", user), ("password", password)],
            )
            .await;
        assert_eq!(p.status.as_u16(), 303, "sign-in failed:\n{}", p.body);
        assert_eq!(p.header("location"), "/");
    }
}
