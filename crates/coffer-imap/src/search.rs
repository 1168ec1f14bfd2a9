//! SEARCH evaluation (RFC 9051 §6.4.4): flags and MODSEQ from the selected view, size and
//! dates from sealed metadata, headers and text from the decrypted message, each loaded
//! only if a key needs it.

use crate::mime;
use crate::types::SearchKey;

/// What a search key can look at for one message; expensive parts are loaded lazily by
/// the caller through the closures.
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub modseq: u64,
    pub flags: &'a [coffer_types::Flag],
    pub largest_seq: u32,
    pub largest_uid: u32,
    /// (size, internal date seconds, zone offset minutes)
    pub meta: Option<(u64, i64, i16)>,
    pub raw: Option<&'a [u8]>,
    pub now: i64,
}

/// Which data a key needs, so the caller loads only that.
#[derive(Default, Clone, Copy)]
pub struct Needs {
    pub meta: bool,
    pub raw: bool,
}

pub fn needs(key: &SearchKey) -> Needs {
    use SearchKey::*;
    match key {
        Before(_) | On(_) | Since(_) | Larger(_) | Smaller(_) | Older(_) | Younger(_) => Needs {
            meta: true,
            raw: false,
        },
        SentBefore(_) | SentOn(_) | SentSince(_) | Bcc(_) | Cc(_) | From(_) | To(_)
        | Subject(_) | Header(..) | Body(_) | Text(_) => Needs {
            meta: false,
            raw: true,
        },
        Not(k) => needs(k),
        Or(a, b) => {
            let (a, b) = (needs(a), needs(b));
            Needs {
                meta: a.meta || b.meta,
                raw: a.raw || b.raw,
            }
        }
        And(keys) => keys
            .iter()
            .map(needs)
            .fold(Needs::default(), |acc, n| Needs {
                meta: acc.meta || n.meta,
                raw: acc.raw || n.raw,
            }),
        _ => Needs::default(),
    }
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

fn header_contains(raw: &[u8], name: &str, needle: &str) -> bool {
    let values = mime::header_values(raw, name);
    if needle.is_empty() {
        // HEADER name "" matches every message that has the field (RFC 9051 §6.4.4).
        return !values.is_empty();
    }
    values.iter().any(|v| contains_ci(v, needle))
}

fn day_of(ts: i64, offset_min: i16) -> i64 {
    (ts + offset_min as i64 * 60).div_euclid(86_400)
}

pub fn matches(key: &SearchKey, c: &Candidate<'_>) -> bool {
    use coffer_types::Flag as F;
    use SearchKey::*;
    let has = |f: &F| c.flags.contains(f);
    let meta = c.meta.unwrap_or((0, 0, 0));
    let raw = c.raw.unwrap_or(b"");
    match key {
        All => true,
        Answered => has(&F::Answered),
        Deleted => has(&F::Deleted),
        Draft => has(&F::Draft),
        Flagged => has(&F::Flagged),
        Seen => has(&F::Seen),
        Unanswered => !has(&F::Answered),
        Undeleted => !has(&F::Deleted),
        Undraft => !has(&F::Draft),
        Unflagged => !has(&F::Flagged),
        Unseen => !has(&F::Seen),
        // Coffer keeps no \Recent state (IMAP4rev2 dropped it): nothing is recent.
        New | Recent => false,
        Old => true,
        Keyword(k) => c
            .flags
            .iter()
            .any(|f| matches!(f, F::Keyword(x) if x.eq_ignore_ascii_case(k))),
        Unkeyword(k) => !c
            .flags
            .iter()
            .any(|f| matches!(f, F::Keyword(x) if x.eq_ignore_ascii_case(k))),
        Before(d) => day_of(meta.1, meta.2) < *d,
        On(d) => day_of(meta.1, meta.2) == *d,
        Since(d) => day_of(meta.1, meta.2) >= *d,
        SentBefore(d) => mime::sent_date(raw).is_some_and(|t| t.div_euclid(86_400) < *d),
        SentOn(d) => mime::sent_date(raw).is_some_and(|t| t.div_euclid(86_400) == *d),
        SentSince(d) => mime::sent_date(raw).is_some_and(|t| t.div_euclid(86_400) >= *d),
        Larger(n) => meta.0 > *n,
        Smaller(n) => meta.0 < *n,
        Older(secs) => c.now - meta.1 >= *secs as i64,
        Younger(secs) => c.now - meta.1 < *secs as i64,
        Bcc(s) => header_contains(raw, "Bcc", s),
        Cc(s) => header_contains(raw, "Cc", s),
        From(s) => header_contains(raw, "From", s),
        To(s) => header_contains(raw, "To", s),
        Subject(s) => header_contains(raw, "Subject", s),
        Header(name, s) => header_contains(raw, name, s),
        Body(s) => contains_ci(&mime::search_text(raw), s),
        Text(s) => {
            let header_end = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4)
                .unwrap_or(raw.len());
            contains_ci(&String::from_utf8_lossy(&raw[..header_end]), s)
                || contains_ci(&mime::search_text(raw), s)
        }
        Uid(set) => set.contains(c.uid, c.largest_uid),
        SequenceSet(set) => set.contains(c.seq, c.largest_seq),
        ModSeq(m) => c.modseq >= *m,
        Not(k) => !matches(k, c),
        Or(a, b) => matches(a, c) || matches(b, c),
        And(keys) => keys.iter().all(|k| matches(k, c)),
    }
}

/// Whether the program uses MODSEQ (the response then carries the highest one).
pub fn uses_modseq(key: &SearchKey) -> bool {
    use SearchKey::*;
    match key {
        ModSeq(_) => true,
        Not(k) => uses_modseq(k),
        Or(a, b) => uses_modseq(a) || uses_modseq(b),
        And(keys) => keys.iter().any(uses_modseq),
        _ => false,
    }
}
