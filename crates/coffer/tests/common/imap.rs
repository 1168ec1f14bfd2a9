//! A small blocking IMAP client over plain TCP for the tests (Coffer accepts LOGIN without
//! TLS from loopback): commands, tagged answers, untagged responses with their literals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One response from the server: its text with each literal replaced by `{N}`, and the
/// literals' bytes in order.
#[derive(Debug)]
pub struct Response {
    pub text: String,
    pub literals: Vec<Vec<u8>>,
}

pub struct Imap {
    r: BufReader<TcpStream>,
    next_tag: u32,
}

/// `s` as an IMAP quoted string.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Imap {
    /// Connects and reads the greeting (30 s read timeout).
    pub fn connect(addr: SocketAddr) -> Imap {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("IMAP connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut imap = Imap {
            r: BufReader::new(s),
            next_tag: 1,
        };
        let greeting = imap.read_line();
        assert!(greeting.starts_with("* OK"), "IMAP greeting {greeting:?}");
        imap
    }

    /// Connects and logs in; panics unless LOGIN answers OK.
    pub fn login(addr: SocketAddr, user: &str, password: &str) -> Imap {
        let mut imap = Imap::connect(addr);
        imap.ok(&format!("LOGIN {} {}", quote(user), quote(password)));
        imap
    }

    pub fn set_read_timeout(&mut self, t: Duration) {
        self.r.get_ref().set_read_timeout(Some(t)).unwrap();
    }

    /// Sends raw bytes (for IDLE's DONE and the like).
    pub fn send(&mut self, raw: &str) {
        self.r.get_mut().write_all(raw.as_bytes()).unwrap();
    }

    /// One line without its CRLF; panics when the connection closed.
    pub fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        let n = self.r.read_until(b'\n', &mut line).unwrap();
        assert!(n > 0, "IMAP connection closed");
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string()
    }

    /// Like [`Imap::read_line`], but `None` when the read timed out.
    pub fn try_read_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        match self.r.read_until(b'\n', &mut line) {
            Ok(0) => panic!("IMAP connection closed"),
            Ok(_) => Some(
                String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(line.is_empty(), "timed out inside a line: {line:?}");
                None
            }
            Err(e) => panic!("IMAP read: {e}"),
        }
    }

    /// One whole response, literals included.
    pub fn read_response(&mut self) -> Response {
        let mut resp = Response {
            text: String::new(),
            literals: Vec::new(),
        };
        loop {
            let line = self.read_line();
            resp.text.push_str(&line);
            let literal = line
                .strip_suffix('}')
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.trim_end_matches('+').parse::<usize>().ok());
            let Some(n) = literal else {
                return resp;
            };
            let mut bytes = vec![0u8; n];
            self.r.read_exact(&mut bytes).unwrap();
            resp.literals.push(bytes);
        }
    }

    /// Sends `command` with a fresh tag; returns the untagged responses and the tagged line.
    pub fn run(&mut self, command: &str) -> (Vec<Response>, String) {
        let tag = format!("t{}", self.next_tag);
        self.next_tag += 1;
        self.send(&format!("{tag} {command}\r\n"));
        let mut untagged = Vec::new();
        loop {
            let resp = self.read_response();
            if resp.text.starts_with(&format!("{tag} ")) {
                let done = resp.text[tag.len() + 1..].to_string();
                return (untagged, done);
            }
            untagged.push(resp);
        }
    }

    /// Runs `command` and panics unless it answers OK; returns the untagged responses.
    pub fn ok(&mut self, command: &str) -> Vec<Response> {
        let (untagged, done) = self.run(command);
        // Never show a password in a failure message.
        let shown = if command.starts_with("LOGIN ") {
            "LOGIN ..."
        } else {
            command
        };
        assert!(done.starts_with("OK"), "{shown} answered {done}");
        untagged
    }

    /// STATUS MESSAGES of `mailbox`.
    pub fn count(&mut self, mailbox: &str) -> u32 {
        let untagged = self.ok(&format!("STATUS {} (MESSAGES)", quote(mailbox)));
        let text = untagged
            .iter()
            .find(|r| r.text.starts_with("* STATUS"))
            .map(|r| r.text.clone())
            .unwrap_or_else(|| panic!("no STATUS answer for {mailbox}"));
        number_after(&text, "MESSAGES ").unwrap_or_else(|| panic!("unparsable {text:?}"))
    }

    /// Every message of `mailbox` as (UID, bytes of BODY[]), in UID order (EXAMINE, so no
    /// flag changes).
    pub fn fetch_all(&mut self, mailbox: &str) -> Vec<(u32, Vec<u8>)> {
        let untagged = self.ok(&format!("EXAMINE {}", quote(mailbox)));
        let exists = untagged
            .iter()
            .find_map(|r| {
                r.text
                    .strip_prefix("* ")
                    .and_then(|t| t.strip_suffix(" EXISTS"))
                    .and_then(|n| n.parse::<u32>().ok())
            })
            .unwrap_or_else(|| panic!("EXAMINE {mailbox} without EXISTS"));
        let mut out = Vec::new();
        if exists > 0 {
            for r in self.ok("UID FETCH 1:* (UID BODY.PEEK[])") {
                if !r.text.contains(" FETCH (") {
                    continue;
                }
                let uid = number_after(&r.text, "UID ")
                    .unwrap_or_else(|| panic!("FETCH without UID: {:?}", r.text));
                assert_eq!(r.literals.len(), 1, "FETCH answer {:?}", r.text);
                out.push((uid, r.literals.into_iter().next().unwrap()));
            }
            assert_eq!(
                out.len(),
                exists as usize,
                "{mailbox}: {exists} EXISTS but {} FETCH answers",
                out.len()
            );
        }
        self.ok("CLOSE");
        out.sort_by_key(|(uid, _)| *uid);
        out
    }
}

/// The number right after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u32> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}
