//! A small blocking IMAP client: enough to time commands against a real server.
//!
//! One command at a time. Every response line is read completely, literals included, so
//! a figure ends when the tagged response has arrived and every byte before it was read.
//! Plain TCP or TLS (rustls, trusting only the installation's own certificate); the
//! client socket can be bound to a chosen loopback source address, so that many
//! connections stay under the server's per-address limit.

use crate::store::BoxError;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TLS client configuration that trusts exactly the certificate in `cert_pem` (the
/// self-signed certificate `coffer init` made for localhost).
pub fn tls_config(cert_pem: &Path) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| format!("reading {}: {e}", cert_pem.display()))?
    {
        let cert = cert.map_err(|e| format!("parsing {}: {e}", cert_pem.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("trusting {}: {e}", cert_pem.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// How to reach the server.
pub struct Connect<'a> {
    pub addr: SocketAddr,
    /// Source address to bind before connecting (any 127.x.y.z works on Linux loopback).
    pub source: Option<IpAddr>,
    /// TLS from the first byte (IMAPS); plain TCP if None.
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
    /// Limit for the connect and for every read and write.
    pub timeout: Duration,
}

pub struct Client {
    r: BufReader<Stream>,
    next_tag: u32,
    line: Vec<u8>,
}

/// Whether a response line (with its CRLF) announces a literal: `{N}` or `~{N}` at its end.
fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&c| c == b'{')?;
    let digits = &l[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn show(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

impl Client {
    /// Connects, completes the TLS handshake if any, and reads the greeting.
    pub fn connect(c: &Connect<'_>) -> Result<Client, BoxError> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(c.addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if let Some(ip) = c.source {
            socket
                .bind(&SocketAddr::new(ip, 0).into())
                .map_err(|e| format!("binding the client socket to {ip}: {e}"))?;
        }
        socket
            .connect_timeout(&c.addr.into(), c.timeout)
            .map_err(|e| format!("connecting to {}: {e}", c.addr))?;
        let tcp: TcpStream = socket.into();
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(c.timeout))?;
        tcp.set_write_timeout(Some(c.timeout))?;
        let stream = match c.tls {
            Some(config) => {
                let name = ServerName::try_from("localhost")?;
                let conn = rustls::ClientConnection::new(config.clone(), name)?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
            None => Stream::Plain(tcp),
        };
        let mut client = Client {
            r: BufReader::with_capacity(64 * 1024, stream),
            next_tag: 1,
            line: Vec::with_capacity(1024),
        };
        let mut greeting = Vec::new();
        client
            .read_response_line(&mut greeting)
            .map_err(|e| format!("reading the greeting from {}: {e}", c.addr))?;
        if !greeting.starts_with(b"* OK") {
            return Err(format!("{} greeted with {:?}", c.addr, show(&greeting)).into());
        }
        Ok(client)
    }

    /// Reads one response line with any literals inside it into `out`.
    fn read_response_line(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError> {
        out.clear();
        loop {
            let start = out.len();
            if self.r.read_until(b'\n', out)? == 0 {
                return Err("the server closed the connection".into());
            }
            match literal_len(&out[start..]) {
                Some(n) => {
                    let at = out.len();
                    out.resize(at + n, 0);
                    self.r.read_exact(&mut out[at..])?;
                }
                None => return Ok(()),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        let w = self.r.get_mut();
        w.write_all(bytes)?;
        w.flush()?;
        Ok(())
    }

    /// Sends `command` with a fresh tag and reads until its tagged response. Every
    /// untagged or continuation line before it goes to `each` (with its literals). Returns
    /// the time from the send to the tagged response; NO and BAD are errors.
    pub fn run(
        &mut self,
        command: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<Duration, BoxError> {
        let tag = format!("b{}", self.next_tag);
        self.next_tag += 1;
        let request = format!("{tag} {command}\r\n");
        let prefix = format!("{tag} ");
        let mut line = std::mem::take(&mut self.line);
        let start = Instant::now();
        self.send(request.as_bytes())?;
        let result = loop {
            if let Err(e) = self.read_response_line(&mut line) {
                break Err(format!("{}: {e}", what(command)).into());
            }
            if let Some(rest) = line.strip_prefix(prefix.as_bytes()) {
                let took = start.elapsed();
                break if rest.starts_with(b"OK") {
                    Ok(took)
                } else {
                    Err(format!("{}: the server answered {:?}", what(command), show(&line)).into())
                };
            }
            each(&line);
        };
        self.line = line;
        result
    }

    /// `APPEND <mailbox> (<flags>) {n}` with a synchronising literal: waits for the
    /// continuation request, sends the message and reads until the tagged OK. Returns the
    /// time from the first byte sent to the tagged response.
    pub fn append(
        &mut self,
        mailbox: &str,
        flags: &str,
        message: &[u8],
    ) -> Result<Duration, BoxError> {
        let tag = format!("b{}", self.next_tag);
        self.next_tag += 1;
        let prefix = format!("{tag} ");
        let start = Instant::now();
        self.send(
            format!("{tag} APPEND {mailbox} ({flags}) {{{}}}\r\n", message.len()).as_bytes(),
        )?;
        let mut line = std::mem::take(&mut self.line);
        let result = (|| {
            loop {
                self.read_response_line(&mut line)
                    .map_err(|e| format!("APPEND: {e}"))?;
                if line.starts_with(b"+") {
                    break;
                }
                if line.starts_with(prefix.as_bytes()) {
                    return Err(format!("APPEND: the server answered {:?}", show(&line)).into());
                }
            }
            let w = self.r.get_mut();
            w.write_all(message)?;
            w.write_all(b"\r\n")?;
            w.flush()?;
            loop {
                self.read_response_line(&mut line)
                    .map_err(|e| format!("APPEND: {e}"))?;
                if let Some(rest) = line.strip_prefix(prefix.as_bytes()) {
                    return if rest.starts_with(b"OK") {
                        Ok(start.elapsed())
                    } else {
                        Err(format!("APPEND: the server answered {:?}", show(&line)).into())
                    };
                }
            }
        })();
        self.line = line;
        result
    }

    /// MULTIAPPEND (RFC 3502) of `messages` to `mailbox` in one command, every message a
    /// non-synchronising literal (LITERAL+, RFC 7888), so the whole command goes out at
    /// once; reads until the tagged OK. For set-up: both servers announce LITERAL+.
    pub fn multi_append(&mut self, mailbox: &str, messages: &[&[u8]]) -> Result<(), BoxError> {
        let tag = format!("b{}", self.next_tag);
        self.next_tag += 1;
        let prefix = format!("{tag} ");
        let mut request = format!("{tag} APPEND {mailbox}").into_bytes();
        for m in messages {
            request.extend_from_slice(format!(" {{{}+}}\r\n", m.len()).as_bytes());
            request.extend_from_slice(m);
        }
        request.extend_from_slice(b"\r\n");
        self.send(&request)?;
        let mut line = std::mem::take(&mut self.line);
        let result = loop {
            if let Err(e) = self.read_response_line(&mut line) {
                break Err(format!("MULTIAPPEND: {e}").into());
            }
            if let Some(rest) = line.strip_prefix(prefix.as_bytes()) {
                break if rest.starts_with(b"OK") {
                    Ok(())
                } else {
                    Err(format!("MULTIAPPEND: the server answered {:?}", show(&line)).into())
                };
            }
        };
        self.line = line;
        result
    }

    /// Sends IDLE and waits for the server's continuation request.
    pub fn start_idle(&mut self) -> Result<(), BoxError> {
        let tag = format!("b{}", self.next_tag);
        self.next_tag += 1;
        self.send(format!("{tag} IDLE\r\n").as_bytes())?;
        let mut line = Vec::new();
        loop {
            self.read_response_line(&mut line)?;
            if line.starts_with(b"+") {
                return Ok(());
            }
            if line.starts_with(tag.as_bytes()) || line.starts_with(b"* BYE") {
                return Err(format!("IDLE: the server answered {:?}", show(&line)).into());
            }
        }
    }
}

/// The command name for error messages, without arguments (LOGIN carries a password).
fn what(command: &str) -> String {
    let mut words = command.split(' ');
    match (words.next(), words.next()) {
        (Some(w), Some(second)) if w.eq_ignore_ascii_case("UID") => format!("UID {second}"),
        (Some(w), _) => w.to_string(),
        _ => String::new(),
    }
}

/// An IMAP quoted string.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_recognised_at_the_end_of_a_line() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {1234}\r\n"), Some(1234));
        assert_eq!(literal_len(b"* 1 FETCH (BINARY[1] ~{7}\r\n"), Some(7));
        assert_eq!(literal_len(b"* 1 FETCH (FLAGS (\\Seen))\r\n"), None);
        assert_eq!(literal_len(b"* OK {x}\r\n"), None);
        assert_eq!(literal_len(b"* OK {}\r\n"), None);
    }

    #[test]
    fn errors_never_show_command_arguments() {
        assert_eq!(what("LOGIN alice \"secret\""), "LOGIN");
        assert_eq!(what("UID FETCH 1:* (FLAGS)"), "UID FETCH");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
