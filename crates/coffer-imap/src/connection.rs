//! One client connection's bytes: the stream (plain TCP, or TLS after STARTTLS or from the
//! start), command framing with literals (RFC 9051 §4.3, RFC 7888 LITERAL+), and the limits
//! that keep a hostile client from using unbounded memory: line length, literal size and
//! total command size.

use crate::parse::trailing_literal;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The transport under a session.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Limits on what one command may be.
#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    /// Longest line (without literals), in bytes.
    pub max_line: usize,
    /// Largest literal in an APPEND (the APPENDLIMIT).
    pub max_append_literal: u64,
    /// Largest literal in any other command.
    pub max_other_literal: u64,
    /// Largest whole command including literals (bounds MULTIAPPEND).
    pub max_command: u64,
}

/// What reading one command produced.
pub enum Frame {
    Command(Vec<u8>),
    /// A line longer than the limit: the connection must end with BYE.
    LineTooLong,
    /// A synchronizing literal over the limit: answer the tag with NO [TOOBIG]; the
    /// client has not sent the literal, so the connection goes on.
    LiteralTooBig {
        tag: String,
        limit: u64,
    },
    /// A non-synchronizing literal over the limit: its bytes are on the way and cannot be
    /// skipped safely; BAD and BYE.
    NonSyncLiteralTooBig {
        tag: String,
    },
    Eof,
}

pub type Reader = BufReader<Io>;

/// Reads one CRLF-terminated line of at most `max` bytes (CRLF removed; bare LF accepted).
/// Returns None at end of stream, Err(()) if the line is too long.
pub async fn read_line(
    r: &mut Reader,
    max: usize,
    out: &mut Vec<u8>,
) -> io::Result<Option<Result<(), ()>>> {
    let start = out.len();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            // End of stream, possibly mid-line: the command is incomplete either way.
            return Ok(None);
        }
        let (used, done) = match available.iter().position(|c| *c == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if out.len() - start + used > max + 2 {
            let n = available.len();
            r.consume(n);
            return Ok(Some(Err(())));
        }
        out.extend_from_slice(&available[..used]);
        r.consume(used);
        if done {
            out.pop();
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(Some(Ok(())));
        }
    }
}

fn first_token(line: &[u8]) -> String {
    let end = line
        .iter()
        .position(|c| *c == b' ')
        .unwrap_or(line.len())
        .min(64);
    String::from_utf8_lossy(&line[..end]).into_owned()
}

fn is_append(line: &[u8]) -> bool {
    let mut words = line.split(|c| *c == b' ');
    words.next();
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}

/// Reads one command, answering synchronizing literals with a continuation request.
pub async fn read_command(r: &mut Reader, limits: &FrameLimits) -> io::Result<Frame> {
    let mut buf = Vec::new();
    let mut total: u64 = 0;
    let mut append = None;
    loop {
        let line_start = buf.len();
        match read_line(r, limits.max_line, &mut buf).await? {
            None => return Ok(Frame::Eof),
            Some(Err(())) => return Ok(Frame::LineTooLong),
            Some(Ok(())) => {}
        }
        let line = &buf[line_start..];
        let append_cmd = *append.get_or_insert_with(|| is_append(line));
        let Some(lit) = trailing_literal(line) else {
            return Ok(Frame::Command(buf));
        };
        let tag = first_token(&buf);
        let limit = if append_cmd {
            limits.max_append_literal
        } else {
            limits.max_other_literal
        };
        let (n, non_sync) = match lit {
            Ok(x) => x,
            Err(()) => return Ok(Frame::NonSyncLiteralTooBig { tag }),
        };
        total += n + line.len() as u64;
        if n > limit || total > limits.max_command {
            if non_sync {
                return Ok(Frame::NonSyncLiteralTooBig { tag });
            }
            return Ok(Frame::LiteralTooBig { tag, limit });
        }
        if !non_sync {
            let w = r.get_mut();
            w.write_all(b"+ OK\r\n").await?;
            w.flush().await?;
        }
        buf.extend_from_slice(b"\r\n");
        let at = buf.len();
        buf.resize(at + n as usize, 0);
        r.read_exact(&mut buf[at..]).await?;
    }
}
