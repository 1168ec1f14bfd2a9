//! A small blocking LMTP client (RFC 2033): LHLO once, then MAIL, RCPT, DATA per message on
//! the same connection, one recipient per message. A delivery ends when the server's
//! per-recipient reply to DATA has arrived.

use crate::store::BoxError;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Lmtp {
    r: BufReader<TcpStream>,
    line: String,
}

/// `message` with CRLF line ends and dot-stuffing, followed by the terminating ".".
pub fn data_block(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl Lmtp {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Lmtp, BoxError> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connecting to LMTP {addr}: {e}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let mut c = Lmtp {
            r: BufReader::new(tcp),
            line: String::new(),
        };
        c.reply("greeting", '2')?;
        c.command("LHLO bench.invalid", '2')?;
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply and checks its first digit.
    fn reply(&mut self, what: &str, want: char) -> Result<(), BoxError> {
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line)? == 0 {
                return Err(format!("LMTP {what}: the server closed the connection").into());
            }
            let l = self.line.trim_end();
            if !l.starts_with(want) {
                return Err(format!("LMTP {what}: the server answered {l:?}").into());
            }
            // "250-..." continues, "250 ..." ends.
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    fn command(&mut self, line: &str, want: char) -> Result<(), BoxError> {
        let w = self.r.get_mut();
        w.write_all(line.as_bytes())?;
        w.write_all(b"\r\n")?;
        w.flush()?;
        let what = line.split(' ').next().unwrap_or(line).to_string();
        self.reply(&what, want)
    }

    /// Delivers `data` (from [`data_block`]) to `rcpt`.
    pub fn deliver(&mut self, rcpt: &str, data: &[u8]) -> Result<(), BoxError> {
        self.command("MAIL FROM:<sender@bench.invalid>", '2')?;
        self.command(&format!("RCPT TO:<{rcpt}>"), '2')?;
        self.command("DATA", '3')?;
        let w = self.r.get_mut();
        w.write_all(data)?;
        w.flush()?;
        self.reply("DATA", '2')
    }

    pub fn quit(mut self) {
        let _ = self.command("QUIT", '2');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_stuffed_and_the_block_ends() {
        assert_eq!(data_block(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(data_block(b".x"), b"..x\r\n.\r\n");
    }
}
