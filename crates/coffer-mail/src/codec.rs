//! Plaintext encodings of the values the mail layer seals: mailbox attributes, message
//! metadata and flags. Each starts with a version byte (docs/FORMAT.md); decoders refuse
//! unknown versions and trailing garbage rather than guess.

use coffer_types::{Flag, MailboxName, SpecialUse};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed {what} has an unknown layout")]
pub struct DecodeError {
    pub what: &'static str,
}

fn err(what: &'static str) -> DecodeError {
    DecodeError { what }
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(err(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().map_err(|_| err(self.what))?,
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| err(self.what))?,
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| err(self.what))?,
        ))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(err(self.what))
        }
    }
}

/// What a mailbox row seals: its name, role and subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    pub name: MailboxName,
    pub special_use: Option<SpecialUse>,
    pub subscribed: bool,
}

const MAILBOX_V1: u8 = 1;

impl MailboxInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.name.as_str().len());
        out.push(MAILBOX_V1);
        out.push(self.subscribed as u8);
        out.push(self.special_use.map(|s| s.code()).unwrap_or(0));
        out.extend_from_slice(self.name.as_str().as_bytes());
        // Zero padding to a multiple of 32 bytes hides the exact name length; names
        // cannot contain NUL (MailboxName refuses control characters).
        out.resize(out.len().div_ceil(32) * 32, 0);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader {
            buf: b,
            what: "mailbox",
        };
        if r.u8()? != MAILBOX_V1 {
            return Err(err("mailbox"));
        }
        let subscribed = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(err("mailbox")),
        };
        let special_use = match r.u8()? {
            0 => None,
            c => Some(SpecialUse::from_code(c).ok_or(err("mailbox"))?),
        };
        let end = r.buf.iter().position(|b| *b == 0).unwrap_or(r.buf.len());
        if r.buf[end..].iter().any(|b| *b != 0) {
            return Err(err("mailbox"));
        }
        let name = std::str::from_utf8(&r.buf[..end]).map_err(|_| err("mailbox"))?;
        let name = MailboxName::new(name).map_err(|_| err("mailbox"))?;
        Ok(MailboxInfo {
            name,
            special_use,
            subscribed,
        })
    }
}

/// What a message row seals besides flags: the blob it owns, exact size and INTERNALDATE
/// (RFC 9051 §2.3.3), and the [`Summary`] FETCH answers from without opening the body.
/// Sealing the blob id here binds row and blob: a row pointed at another message's blob no
/// longer matches its own sealed metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub blob_id: [u8; 16],
    /// Exact size of the message in octets (RFC822.SIZE).
    pub size: u64,
    /// INTERNALDATE as seconds since the epoch, with its zone offset in minutes.
    pub internal_date: i64,
    pub tz_offset_minutes: i16,
    /// Absent in rows written before the summary existed (layout 1); filled on first use.
    pub summary: Option<std::sync::Arc<Summary>>,
}

/// The envelope/bodystructure cache of CRYPTO.md ("Metadata"): the answers to FETCH
/// ENVELOPE, BODYSTRUCTURE and BODY, computed once from the plaintext when the message is
/// stored, and whether `BODY[]` can be sent exactly as stored. Sealed with the rest of the
/// metadata; never in the clear. Debug shows sizes only: the envelope holds the subject
/// and the addresses.
#[derive(Clone, PartialEq, Eq)]
pub struct Summary {
    /// The message has CRLF line ends only and no NUL, so `BODY[]` is the stored bytes and
    /// its size is known before the body is opened (it can stream).
    pub canonical: bool,
    pub envelope: Vec<u8>,
    /// BODYSTRUCTURE (the extensible form).
    pub body_structure: Vec<u8>,
    /// BODY (the non-extensible form).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Summary")
            .field("canonical", &self.canonical)
            .field("envelope_len", &self.envelope.len())
            .field("body_structure_len", &self.body_structure.len())
            .finish_non_exhaustive()
    }
}

const META_V1: u8 = 1;
/// Layout 2 adds the summary and pads the whole to a multiple of [`META_PAD`] bytes, so
/// the sealed length says little about the subject or address lengths inside.
const META_V2: u8 = 2;
const META_PAD: usize = 64;
/// A summary part longer than this is not cached (the answer is computed from the body):
/// a hostile message cannot blow up every metadata read.
pub const SUMMARY_PART_MAX: usize = 64 * 1024;

impl MessageMeta {
    pub fn encode(&self) -> Vec<u8> {
        let extra = self
            .summary
            .as_ref()
            .map(|s| 13 + s.envelope.len() + s.body_structure.len() + s.body.len())
            .unwrap_or(0);
        let mut out = Vec::with_capacity(36 + extra + META_PAD);
        out.push(META_V2);
        out.extend_from_slice(&self.blob_id);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.internal_date.to_be_bytes());
        out.extend_from_slice(&self.tz_offset_minutes.to_be_bytes());
        match &self.summary {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.push(s.canonical as u8);
                for part in [&s.envelope, &s.body_structure, &s.body] {
                    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                    out.extend_from_slice(part);
                }
            }
        }
        out.resize(out.len().div_ceil(META_PAD) * META_PAD, 0);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "message metadata";
        let mut r = Reader { buf: b, what: WHAT };
        let version = r.u8()?;
        if version != META_V1 && version != META_V2 {
            return Err(err(WHAT));
        }
        let blob_id: [u8; 16] = r.take(16)?.try_into().map_err(|_| err(WHAT))?;
        let size = r.u64()?;
        let internal_date = r.i64()?;
        let tz = r.u16()? as i16;
        let mut summary = None;
        if version == META_V2 {
            match r.u8()? {
                0 => {}
                1 => {
                    let canonical = match r.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(err(WHAT)),
                    };
                    let mut parts = [Vec::new(), Vec::new(), Vec::new()];
                    for part in &mut parts {
                        let len = r.u32()? as usize;
                        *part = r.take(len)?.to_vec();
                    }
                    let [envelope, body_structure, body] = parts;
                    summary = Some(std::sync::Arc::new(Summary {
                        canonical,
                        envelope,
                        body_structure,
                        body,
                    }));
                }
                _ => return Err(err(WHAT)),
            }
            // Only zero padding may follow.
            if r.buf.iter().any(|b| *b != 0) {
                return Err(err(WHAT));
            }
        } else {
            r.end()?;
        }
        Ok(MessageMeta {
            blob_id,
            size,
            internal_date,
            tz_offset_minutes: tz,
            summary,
        })
    }
}

const FLAGS_V1: u8 = 1;

/// Encodes flags canonically: system flags as a bitmask, keywords sorted and deduplicated.
pub fn encode_flags(flags: &[Flag]) -> Vec<u8> {
    let mut bits = 0u8;
    let mut keywords: Vec<&str> = Vec::new();
    for f in flags {
        match f {
            Flag::Seen => bits |= 1,
            Flag::Answered => bits |= 2,
            Flag::Flagged => bits |= 4,
            Flag::Deleted => bits |= 8,
            Flag::Draft => bits |= 16,
            Flag::Keyword(k) => keywords.push(k),
        }
    }
    keywords.sort_unstable();
    keywords.dedup();
    let mut out = vec![FLAGS_V1, bits];
    out.extend_from_slice(&(keywords.len() as u16).to_be_bytes());
    for k in keywords {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
    }
    out
}

pub fn decode_flags(b: &[u8]) -> Result<Vec<Flag>, DecodeError> {
    let mut r = Reader {
        buf: b,
        what: "flags",
    };
    if r.u8()? != FLAGS_V1 {
        return Err(err("flags"));
    }
    let bits = r.u8()?;
    if bits & !31 != 0 {
        return Err(err("flags"));
    }
    let mut out = Vec::new();
    for (bit, flag) in [
        (1, Flag::Seen),
        (2, Flag::Answered),
        (4, Flag::Flagged),
        (8, Flag::Deleted),
        (16, Flag::Draft),
    ] {
        if bits & bit != 0 {
            out.push(flag);
        }
    }
    let n = r.u16()?;
    for _ in 0..n {
        let len = r.u8()? as usize;
        let k = std::str::from_utf8(r.take(len)?).map_err(|_| err("flags"))?;
        out.push(Flag::parse(k).ok_or(err("flags"))?);
    }
    r.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let info = MailboxInfo {
            name: MailboxName::new("Work/Ünïcode").unwrap(),
            special_use: Some(SpecialUse::Sent),
            subscribed: true,
        };
        assert_eq!(MailboxInfo::decode(&info.encode()).unwrap(), info);
        let meta = MessageMeta {
            blob_id: [3; 16],
            size: 12345,
            internal_date: 1_700_000_000,
            tz_offset_minutes: -300,
            summary: None,
        };
        assert_eq!(MessageMeta::decode(&meta.encode()).unwrap(), meta);
        let with_summary = MessageMeta {
            summary: Some(std::sync::Arc::new(Summary {
                canonical: true,
                envelope: b"(NIL \"hi\" NIL NIL NIL NIL NIL NIL NIL NIL)".to_vec(),
                body_structure: b"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 2 1 NIL NIL NIL NIL)"
                    .to_vec(),
                body: b"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 2 1)".to_vec(),
            })),
            ..meta.clone()
        };
        let encoded = with_summary.encode();
        assert_eq!(encoded.len() % META_PAD, 0, "padded");
        assert_eq!(MessageMeta::decode(&encoded).unwrap(), with_summary);
        // Layout 1 (rows from before the summary) still reads, without a summary.
        let mut v1 = vec![META_V1];
        v1.extend_from_slice(&[3; 16]);
        v1.extend_from_slice(&12345u64.to_be_bytes());
        v1.extend_from_slice(&1_700_000_000i64.to_be_bytes());
        v1.extend_from_slice(&(-300i16).to_be_bytes());
        assert_eq!(MessageMeta::decode(&v1).unwrap(), meta);
        let flags = vec![Flag::Seen, Flag::Keyword("$Label1".into()), Flag::Deleted];
        let back = decode_flags(&encode_flags(&flags)).unwrap();
        assert_eq!(
            back,
            vec![Flag::Seen, Flag::Deleted, Flag::Keyword("$Label1".into())]
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\x02", b"\x01\x05", b"\x01\x00\x01\xff\xff"] {
            assert!(MailboxInfo::decode(bad).is_err());
            assert!(decode_flags(bad).is_err());
            assert!(MessageMeta::decode(bad).is_err());
        }
        let mut meta = MessageMeta {
            blob_id: [0; 16],
            size: 1,
            internal_date: 2,
            tz_offset_minutes: 0,
            summary: None,
        }
        .encode();
        meta.push(1);
        assert!(MessageMeta::decode(&meta).is_err(), "trailing byte");
        let mut cut = MessageMeta {
            blob_id: [0; 16],
            size: 1,
            internal_date: 2,
            tz_offset_minutes: 0,
            summary: Some(std::sync::Arc::new(Summary {
                canonical: false,
                envelope: vec![b'x'; 100],
                body_structure: Vec::new(),
                body: Vec::new(),
            })),
        }
        .encode();
        cut.truncate(60);
        assert!(MessageMeta::decode(&cut).is_err(), "summary cut short");
    }
}
