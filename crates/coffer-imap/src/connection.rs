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
    /// COMPRESS=DEFLATE (RFC 4978) over either of the above.
    Deflate(Box<Deflate>),
}

/// Raw DEFLATE (RFC 1951, no zlib header) in both directions, as RFC 4978 §4 requires;
/// every flush ends with a sync flush so the peer can decode all that was sent.
pub struct Deflate {
    inner: Io,
    comp: flate2::Compress,
    decomp: flate2::Decompress,
    /// Compressed bytes read but not yet inflated.
    input: Vec<u8>,
    input_pos: usize,
    /// Deflated bytes not yet written to `inner`.
    output: Vec<u8>,
    eof: bool,
}

impl Deflate {
    pub fn new(inner: Io) -> Deflate {
        Deflate {
            inner,
            comp: flate2::Compress::new(flate2::Compression::new(6), false),
            decomp: flate2::Decompress::new(false),
            input: Vec::new(),
            input_pos: 0,
            output: Vec::new(),
            eof: false,
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.output.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.output) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.output.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn deflate(&mut self, mut data: &[u8], flush: flate2::FlushCompress) -> io::Result<()> {
        loop {
            self.output.reserve(data.len() / 2 + 64);
            let before_in = self.comp.total_in();
            let before_out = self.comp.total_out();
            self.comp
                .compress_vec(data, &mut self.output, flush)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let consumed = (self.comp.total_in() - before_in) as usize;
            let produced = self.comp.total_out() - before_out;
            data = &data[consumed..];
            // Done when all input is taken and the flush produced no more output.
            if data.is_empty() && (produced == 0 || self.output.capacity() > self.output.len()) {
                return Ok(());
            }
        }
    }
}

impl AsyncRead for Deflate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Inflate even with no new input: a previous call may have filled the caller's
            // buffer and left decoded output inside the decompressor.
            {
                let out = buf.initialize_unfilled();
                let before_in = this.decomp.total_in();
                let before_out = this.decomp.total_out();
                this.decomp
                    .decompress(
                        &this.input[this.input_pos..],
                        out,
                        flate2::FlushDecompress::None,
                    )
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let consumed = (this.decomp.total_in() - before_in) as usize;
                let produced = (this.decomp.total_out() - before_out) as usize;
                this.input_pos += consumed;
                if produced > 0 {
                    buf.advance(produced);
                    return Poll::Ready(Ok(()));
                }
                if consumed > 0 {
                    continue;
                }
                // Neither consumed nor produced: more compressed input is needed.
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.input.drain(..this.input_pos);
            this.input_pos = 0;
            // A peer cannot make us hold more than this much undecoded input.
            if this.input.len() > 1 << 20 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "undecodable DEFLATE input",
                )));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                        continue;
                    }
                    this.input.extend_from_slice(rb.filled());
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Deflate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Keep the pending output bounded: drain before taking more.
        if this.output.len() > 64 * 1024 {
            match this.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        this.deflate(data, flate2::FlushCompress::None)?;
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.deflate(&[], flate2::FlushCompress::Sync)?;
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
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
            Io::Deflate(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Io::Deflate(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Deflate(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Deflate(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
    /// The command text (literal markers included, each followed by CRLF) and the literal
    /// contents in order.
    Command(Vec<u8>, Vec<Vec<u8>>),
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
    let mut text = Vec::new();
    let mut literals = Vec::new();
    let mut total: u64 = 0;
    let mut append = None;
    loop {
        let line_start = text.len();
        match read_line(r, limits.max_line, &mut text).await? {
            None => return Ok(Frame::Eof),
            Some(Err(())) => return Ok(Frame::LineTooLong),
            Some(Ok(())) => {}
        }
        let line = &text[line_start..];
        let append_cmd = *append.get_or_insert_with(|| is_append(line));
        let Some(lit) = trailing_literal(line) else {
            return Ok(Frame::Command(text, literals));
        };
        let tag = first_token(&text);
        let limit = if append_cmd {
            limits.max_append_literal
        } else {
            limits.max_other_literal
        };
        let (n, non_sync) = match lit {
            Ok(x) => x,
            Err(()) => return Ok(Frame::NonSyncLiteralTooBig { tag }),
        };
        total += n + (text.len() - line_start) as u64;
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
        text.extend_from_slice(b"\r\n");
        let mut data = vec![0; n as usize];
        r.read_exact(&mut data).await?;
        literals.push(data);
    }
}
