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
/// (RFC 9051 §2.3.3). Sealing the blob id here binds row and blob: a row pointed at
/// another message's blob no longer matches its own sealed metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub blob_id: [u8; 16],
    /// Exact size of the message in octets (RFC822.SIZE).
    pub size: u64,
    /// INTERNALDATE as seconds since the epoch, with its zone offset in minutes.
    pub internal_date: i64,
    pub tz_offset_minutes: i16,
}

const META_V1: u8 = 1;

impl MessageMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(35);
        out.push(META_V1);
        out.extend_from_slice(&self.blob_id);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.internal_date.to_be_bytes());
        out.extend_from_slice(&self.tz_offset_minutes.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader {
            buf: b,
            what: "message metadata",
        };
        if r.u8()? != META_V1 {
            return Err(err("message metadata"));
        }
        let blob_id: [u8; 16] = r
            .take(16)?
            .try_into()
            .map_err(|_| err("message metadata"))?;
        let size = r.u64()?;
        let internal_date = r.i64()?;
        let tz = r.u16()? as i16;
        r.end()?;
        Ok(MessageMeta {
            blob_id,
            size,
            internal_date,
            tz_offset_minutes: tz,
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
        };
        assert_eq!(MessageMeta::decode(&meta.encode()).unwrap(), meta);
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
        }
        .encode();
        meta.push(0);
        assert!(MessageMeta::decode(&meta).is_err(), "trailing byte");
    }
}
