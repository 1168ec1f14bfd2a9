//! The command parser: RFC 9051 §9 ABNF (and the extensions' grammar) over one complete
//! command as the connection assembled it, literals included inline as `{n}\r\n<bytes>`.
//!
//! Functions are named after the ABNF rule they implement. Errors say what was expected,
//! for the tagged BAD the client gets. Nesting of parenthesised search keys is bounded.

use crate::types::*;

/// Deepest nesting of parenthesised or NOT/OR search keys accepted.
pub const MAX_NESTING: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The tag, if it could be read (for a tagged BAD); None means answer untagged BAD.
    pub tag: Option<String>,
    pub message: String,
}

type R<T> = Result<T, String>;

struct P<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
    /// Literal contents read by the connection, in order; None when they are inline in `b`
    /// (tests and traces). Taking them out of the queue moves them without a copy, so a
    /// large APPEND is not held twice in memory.
    lits: Option<std::collections::VecDeque<Vec<u8>>>,
}

fn is_atom_char(c: u8) -> bool {
    // ATOM-CHAR = any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
    c > 0x20 && c < 0x7f && !matches!(c, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(c: u8) -> bool {
    is_atom_char(c) || c == b']'
}

fn is_list_char(c: u8) -> bool {
    is_atom_char(c) || c == b']' || c == b'%' || c == b'*'
}

fn is_tag_char(c: u8) -> bool {
    is_astring_char(c) && c != b'+'
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Days from the civil date to 1970-01-01 (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eof(&self) -> bool {
        self.i >= self.b.len()
    }
    fn expect(&mut self, c: u8, what: &str) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {what}"))
        }
    }
    fn sp(&mut self) -> R<()> {
        self.expect(b' ', "a space")
    }
    fn try_byte(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.i < self.b.len() && f(self.b[self.i]) {
            self.i += 1;
        }
        &self.b[start..self.i]
    }
    /// Case-insensitive keyword followed by a non-atom character.
    fn keyword(&mut self, kw: &str) -> bool {
        let end = self.i + kw.len();
        if end <= self.b.len()
            && self.b[self.i..end].eq_ignore_ascii_case(kw.as_bytes())
            && self
                .b
                .get(end)
                .is_none_or(|c| !is_atom_char(*c) || *c == b'[')
        {
            self.i = end;
            true
        } else {
            false
        }
    }
    fn atom(&mut self) -> R<String> {
        let a = self.take_while(is_atom_char);
        if a.is_empty() {
            return Err("expected an atom".into());
        }
        Ok(String::from_utf8_lossy(a).into_owned())
    }
    fn number(&mut self) -> R<u64> {
        let d = self.take_while(|c| c.is_ascii_digit());
        if d.is_empty() || d.len() > 19 {
            return Err("expected a number".into());
        }
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "number out of range".into())
    }
    fn number32(&mut self) -> R<u32> {
        u32::try_from(self.number()?).map_err(|_| "number out of range".into())
    }
    fn nz_number(&mut self) -> R<u32> {
        match self.number32()? {
            0 => Err("expected a non-zero number".into()),
            n => Ok(n),
        }
    }
    /// literal / literal8: `{n}` `{n+}` `~{n}` CRLF then n bytes.
    fn literal(&mut self) -> R<(Vec<u8>, bool)> {
        let binary = self.try_byte(b'~');
        self.expect(b'{', "a literal")?;
        let n = self.number()? as usize;
        self.try_byte(b'+');
        self.expect(b'}', "'}'")?;
        self.expect(b'\r', "CRLF after a literal length")?;
        self.expect(b'\n', "CRLF after a literal length")?;
        let data = match self.lits.as_mut() {
            Some(queue) => {
                let data = queue.pop_front().ok_or("literal is missing")?;
                if data.len() != n {
                    return Err("literal is shorter than announced".into());
                }
                data
            }
            None => {
                if self.i + n > self.b.len() {
                    return Err("literal is shorter than announced".into());
                }
                let data = self.b[self.i..self.i + n].to_vec();
                self.i += n;
                data
            }
        };
        if !binary && data.contains(&0) {
            return Err("NUL in a literal (use literal8)".into());
        }
        Ok((data, binary))
    }
    fn quoted(&mut self) -> R<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string".into()),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.i += 1;
                        }
                        _ => return Err("bad escape in a quoted string".into()),
                    }
                }
                Some(b'\r' | b'\n' | 0) => return Err("CR, LF or NUL in a quoted string".into()),
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
    fn string(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => Ok(self.literal()?.0),
            _ => Err("expected a string".into()),
        }
    }
    fn astring(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    return Err("expected an atom or string".into());
                }
                Ok(a.to_vec())
            }
        }
    }
    fn astring_utf8(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "string is not UTF-8".into())
    }
    fn nstring(&mut self) -> R<Option<Vec<u8>>> {
        if self.keyword("NIL") {
            Ok(None)
        } else {
            self.string().map(Some)
        }
    }
    fn mailbox(&mut self) -> R<Vec<u8>> {
        self.astring()
    }
    /// list-mailbox = 1*list-char / string
    fn list_mailbox(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(is_list_char);
                if a.is_empty() {
                    return Err("expected a mailbox pattern".into());
                }
                Ok(a.to_vec())
            }
        }
    }
    fn seq_number(&mut self) -> R<SeqNumber> {
        if self.try_byte(b'*') {
            Ok(SeqNumber::Largest)
        } else {
            Ok(SeqNumber::Value(self.nz_number()?))
        }
    }
    /// sequence-set (RFC 9051 §9); `$` (SEARCHRES) is not supported.
    fn sequence_set(&mut self) -> R<SequenceSet> {
        let mut out = Vec::new();
        loop {
            let a = self
                .seq_number()
                .map_err(|_| "expected a sequence set".to_string())?;
            let b = if self.try_byte(b':') {
                self.seq_number()?
            } else {
                a
            };
            out.push((a, b));
            if !self.try_byte(b',') {
                break;
            }
        }
        Ok(SequenceSet(out))
    }
    fn flag(&mut self) -> R<String> {
        if self.try_byte(b'\\') {
            if self.try_byte(b'*') {
                return Ok("\\*".into());
            }
            return Ok(format!("\\{}", self.atom()?));
        }
        self.atom()
    }
    fn flag_list(&mut self) -> R<Vec<String>> {
        self.expect(b'(', "'(' to start a flag list")?;
        let mut out = Vec::new();
        if self.try_byte(b')') {
            return Ok(out);
        }
        loop {
            out.push(self.flag()?);
            if self.try_byte(b')') {
                return Ok(out);
            }
            self.sp()?;
        }
    }
    /// Flags after STORE: a list or space-separated flags.
    fn store_flags(&mut self) -> R<Vec<String>> {
        if self.peek() == Some(b'(') {
            return self.flag_list();
        }
        let mut out = vec![self.flag()?];
        while self.try_byte(b' ') {
            out.push(self.flag()?);
        }
        Ok(out)
    }
    /// date = date-text / DQUOTE date-text DQUOTE; date-text = date-day "-" date-month "-" date-year
    fn date(&mut self) -> R<i64> {
        let quoted = self.try_byte(b'"');
        let day = self.number32()?;
        self.expect(b'-', "'-' in a date")?;
        let m = self.take_while(|c| c.is_ascii_alphabetic());
        let month = MONTHS
            .iter()
            .position(|x| m.eq_ignore_ascii_case(x.as_bytes()))
            .ok_or("unknown month in a date")? as u32
            + 1;
        self.expect(b'-', "'-' in a date")?;
        let year = self.number32()?;
        if quoted {
            self.expect(b'"', "closing quote of a date")?;
        }
        if !(1..=31).contains(&day) || !(1..=9999).contains(&year) {
            return Err("invalid date".into());
        }
        Ok(days_from_civil(year as i64, month, day))
    }
    /// date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
    fn date_time(&mut self) -> R<(i64, i16)> {
        self.expect(b'"', "a quoted date-time")?;
        self.try_byte(b' ');
        let day = self.number32()?;
        self.expect(b'-', "'-' in a date-time")?;
        let m = self.take_while(|c| c.is_ascii_alphabetic());
        let month = MONTHS
            .iter()
            .position(|x| m.eq_ignore_ascii_case(x.as_bytes()))
            .ok_or("unknown month in a date-time")? as u32
            + 1;
        self.expect(b'-', "'-' in a date-time")?;
        let year = self.number32()?;
        self.sp()?;
        let hh = self.number32()?;
        self.expect(b':', "':' in a time")?;
        let mm = self.number32()?;
        self.expect(b':', "':' in a time")?;
        let ss = self.number32()?;
        self.sp()?;
        let sign = match self.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err("expected a zone (+hhmm or -hhmm)".into()),
        };
        self.i += 1;
        let z = self.take_while(|c| c.is_ascii_digit());
        if z.len() != 4 {
            return Err("expected a zone (+hhmm or -hhmm)".into());
        }
        let z: i64 = std::str::from_utf8(z).unwrap_or("0").parse().unwrap_or(0);
        self.expect(b'"', "closing quote of a date-time")?;
        if !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 || (z % 100) > 59 {
            return Err("invalid date-time".into());
        }
        let offset_min = sign * ((z / 100) * 60 + z % 100);
        let days = days_from_civil(year as i64, month, day);
        let local = days * 86_400 + (hh * 3600 + mm * 60 + ss) as i64;
        Ok((local - offset_min * 60, offset_min as i16))
    }

    fn section_part(&mut self) -> R<Vec<u32>> {
        let mut part = Vec::new();
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            part.push(self.nz_number()?);
            if !self.try_byte(b'.') {
                break;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i -= 1; // the dot belongs to the section text
                break;
            }
        }
        Ok(part)
    }

    fn header_list(&mut self) -> R<Vec<String>> {
        self.expect(b'(', "'(' to start a header field list")?;
        let mut out = Vec::new();
        loop {
            out.push(self.astring_utf8()?);
            if self.try_byte(b')') {
                return Ok(out);
            }
            self.sp()?;
        }
    }

    /// section = "[" [section-spec] "]"
    fn section(&mut self) -> R<Section> {
        self.expect(b'[', "'['")?;
        let part = self.section_part()?;
        if !part.is_empty() && !self.try_byte(b'.') {
            self.expect(b']', "']'")?;
            return Ok(Section { part, text: None });
        }
        let text = if self.try_byte(b']') {
            return Ok(Section { part, text: None });
        } else if self.keyword("HEADER.FIELDS.NOT") {
            self.sp()?;
            Some(SectionText::HeaderFieldsNot(self.header_list()?))
        } else if self.keyword("HEADER.FIELDS") {
            self.sp()?;
            Some(SectionText::HeaderFields(self.header_list()?))
        } else if self.keyword("HEADER") {
            Some(SectionText::Header)
        } else if self.keyword("TEXT") {
            Some(SectionText::Text)
        } else if self.keyword("MIME") {
            if part.is_empty() {
                return Err("MIME needs a part number".into());
            }
            Some(SectionText::Mime)
        } else {
            return Err("unknown section".into());
        };
        self.expect(b']', "']'")?;
        Ok(Section { part, text })
    }

    fn partial(&mut self) -> R<Option<(u32, u32)>> {
        if !self.try_byte(b'<') {
            return Ok(None);
        }
        let offset = self.number32()?;
        self.expect(b'.', "'.' in a partial range")?;
        let len = self.nz_number()?;
        self.expect(b'>', "'>'")?;
        Ok(Some((offset, len)))
    }

    fn binary_part(&mut self) -> R<Vec<u32>> {
        self.expect(b'[', "'['")?;
        let mut part = Vec::new();
        if !self.try_byte(b']') {
            loop {
                part.push(self.nz_number()?);
                if self.try_byte(b']') {
                    break;
                }
                self.expect(b'.', "'.' in a part number")?;
            }
        }
        Ok(part)
    }

    fn fetch_att(&mut self) -> R<FetchAtt> {
        if self.keyword("ENVELOPE") {
            Ok(FetchAtt::Envelope)
        } else if self.keyword("FLAGS") {
            Ok(FetchAtt::Flags)
        } else if self.keyword("INTERNALDATE") {
            Ok(FetchAtt::InternalDate)
        } else if self.keyword("RFC822.SIZE") {
            Ok(FetchAtt::Rfc822Size)
        } else if self.keyword("RFC822.HEADER") {
            Ok(FetchAtt::Rfc822Header)
        } else if self.keyword("RFC822.TEXT") {
            Ok(FetchAtt::Rfc822Text)
        } else if self.keyword("RFC822") {
            Ok(FetchAtt::Rfc822)
        } else if self.keyword("BODYSTRUCTURE") {
            Ok(FetchAtt::BodyStructure)
        } else if self.keyword("UID") {
            Ok(FetchAtt::Uid)
        } else if self.keyword("MODSEQ") {
            Ok(FetchAtt::ModSeq)
        } else if self.keyword("BINARY.SIZE") {
            Ok(FetchAtt::BinarySize(self.binary_part()?))
        } else if self.keyword("BINARY.PEEK") {
            let part = self.binary_part()?;
            Ok(FetchAtt::Binary {
                peek: true,
                part,
                partial: self.partial()?,
            })
        } else if self.keyword("BINARY") {
            let part = self.binary_part()?;
            Ok(FetchAtt::Binary {
                peek: false,
                part,
                partial: self.partial()?,
            })
        } else if self.keyword("BODY.PEEK") {
            let section = self.section()?;
            Ok(FetchAtt::BodySection {
                peek: true,
                section,
                partial: self.partial()?,
            })
        } else if self.keyword("BODY") {
            if self.peek() == Some(b'[') {
                let section = self.section()?;
                Ok(FetchAtt::BodySection {
                    peek: false,
                    section,
                    partial: self.partial()?,
                })
            } else {
                Ok(FetchAtt::Body)
            }
        } else {
            Err("unknown FETCH data item".into())
        }
    }

    fn fetch_atts(&mut self) -> R<Vec<FetchAtt>> {
        use FetchAtt::*;
        if self.keyword("ALL") {
            return Ok(vec![Flags, InternalDate, Rfc822Size, Envelope]);
        }
        if self.keyword("FAST") {
            return Ok(vec![Flags, InternalDate, Rfc822Size]);
        }
        if self.keyword("FULL") {
            return Ok(vec![Flags, InternalDate, Rfc822Size, Envelope, Body]);
        }
        if self.try_byte(b'(') {
            let mut out = Vec::new();
            loop {
                out.push(self.fetch_att()?);
                if self.try_byte(b')') {
                    return Ok(out);
                }
                self.sp()?;
            }
        }
        Ok(vec![self.fetch_att()?])
    }

    fn search_string(&mut self) -> R<String> {
        let b = self.astring()?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    fn search_key(&mut self) -> R<SearchKey> {
        use SearchKey::*;
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!("search keys nested deeper than {MAX_NESTING}"));
        }
        let key = self.search_key_inner();
        self.depth -= 1;
        let _ = All;
        key
    }

    fn search_key_inner(&mut self) -> R<SearchKey> {
        use SearchKey::*;
        if self.try_byte(b'(') {
            let mut keys = vec![self.search_key()?];
            while self.try_byte(b' ') {
                keys.push(self.search_key()?);
            }
            self.expect(b')', "')' to close a search key list")?;
            return Ok(if keys.len() == 1 {
                keys.pop().unwrap_or(All)
            } else {
                And(keys)
            });
        }
        if self.peek().is_some_and(|c| c.is_ascii_digit() || c == b'*') {
            return Ok(SequenceSet(self.sequence_set()?));
        }
        let word = self.take_while(|c| is_atom_char(c) && c != b'(');
        let word = String::from_utf8_lossy(word).to_ascii_uppercase();
        let arg_sp = |p: &mut Self| p.sp();
        Ok(match word.as_str() {
            "ALL" => All,
            "ANSWERED" => Answered,
            "DELETED" => Deleted,
            "DRAFT" => Draft,
            "FLAGGED" => Flagged,
            "SEEN" => Seen,
            "NEW" => New,
            "OLD" => Old,
            "RECENT" => Recent,
            "UNANSWERED" => Unanswered,
            "UNDELETED" => Undeleted,
            "UNDRAFT" => Undraft,
            "UNFLAGGED" => Unflagged,
            "UNSEEN" => Unseen,
            "KEYWORD" => {
                arg_sp(self)?;
                Keyword(self.flag()?)
            }
            "UNKEYWORD" => {
                arg_sp(self)?;
                Unkeyword(self.flag()?)
            }
            "BEFORE" => {
                arg_sp(self)?;
                Before(self.date()?)
            }
            "ON" => {
                arg_sp(self)?;
                On(self.date()?)
            }
            "SINCE" => {
                arg_sp(self)?;
                Since(self.date()?)
            }
            "SENTBEFORE" => {
                arg_sp(self)?;
                SentBefore(self.date()?)
            }
            "SENTON" => {
                arg_sp(self)?;
                SentOn(self.date()?)
            }
            "SENTSINCE" => {
                arg_sp(self)?;
                SentSince(self.date()?)
            }
            "LARGER" => {
                arg_sp(self)?;
                Larger(self.number()?)
            }
            "SMALLER" => {
                arg_sp(self)?;
                Smaller(self.number()?)
            }
            "OLDER" => {
                arg_sp(self)?;
                Older(self.nz_number()? as u64)
            }
            "YOUNGER" => {
                arg_sp(self)?;
                Younger(self.nz_number()? as u64)
            }
            "BCC" => {
                arg_sp(self)?;
                Bcc(self.search_string()?)
            }
            "CC" => {
                arg_sp(self)?;
                Cc(self.search_string()?)
            }
            "FROM" => {
                arg_sp(self)?;
                From(self.search_string()?)
            }
            "TO" => {
                arg_sp(self)?;
                To(self.search_string()?)
            }
            "SUBJECT" => {
                arg_sp(self)?;
                Subject(self.search_string()?)
            }
            "BODY" => {
                arg_sp(self)?;
                Body(self.search_string()?)
            }
            "TEXT" => {
                arg_sp(self)?;
                Text(self.search_string()?)
            }
            "HEADER" => {
                arg_sp(self)?;
                let name = self.search_string()?;
                arg_sp(self)?;
                Header(name, self.search_string()?)
            }
            "UID" => {
                arg_sp(self)?;
                Uid(self.sequence_set()?)
            }
            "MODSEQ" => {
                arg_sp(self)?;
                // Optional entry-name and entry-type-req (RFC 7162 §3.1.5) are accepted and ignored.
                if self.peek() == Some(b'"') {
                    self.quoted()?;
                    self.sp()?;
                    self.atom()?;
                    self.sp()?;
                }
                ModSeq(self.number()?)
            }
            "NOT" => {
                arg_sp(self)?;
                Not(Box::new(self.search_key()?))
            }
            "OR" => {
                arg_sp(self)?;
                let a = self.search_key()?;
                self.sp()?;
                Or(Box::new(a), Box::new(self.search_key()?))
            }
            "" => return Err("expected a search key".into()),
            other => return Err(format!("unknown search key {other}")),
        })
    }

    /// search-key *(SP search-key), as an implicit AND.
    fn search_program(&mut self) -> R<SearchKey> {
        let mut keys = vec![self.search_key()?];
        while self.try_byte(b' ') {
            keys.push(self.search_key()?);
        }
        Ok(if keys.len() == 1 {
            keys.pop().unwrap_or(SearchKey::All)
        } else {
            SearchKey::And(keys)
        })
    }

    fn search_return_opts(&mut self) -> R<Option<Vec<SearchReturn>>> {
        if !self.keyword("RETURN") {
            return Ok(None);
        }
        self.sp()?;
        self.expect(b'(', "'(' after RETURN")?;
        let mut out = Vec::new();
        if !self.try_byte(b')') {
            loop {
                let w = self.atom()?.to_ascii_uppercase();
                out.push(match w.as_str() {
                    "MIN" => SearchReturn::Min,
                    "MAX" => SearchReturn::Max,
                    "ALL" => SearchReturn::All,
                    "COUNT" => SearchReturn::Count,
                    other => return Err(format!("unknown RETURN option {other}")),
                });
                if self.try_byte(b')') {
                    break;
                }
                self.sp()?;
            }
        }
        self.sp()?;
        Ok(Some(out))
    }

    fn status_items(&mut self) -> R<Vec<StatusItem>> {
        self.expect(b'(', "'(' to start status items")?;
        let mut out = Vec::new();
        loop {
            let w = self.atom()?.to_ascii_uppercase();
            out.push(match w.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "DELETED" => StatusItem::Deleted,
                "SIZE" => StatusItem::Size,
                "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
                "APPENDLIMIT" => StatusItem::AppendLimit,
                other => return Err(format!("unknown status item {other}")),
            });
            if self.try_byte(b')') {
                return Ok(out);
            }
            self.sp()?;
        }
    }

    fn select_params(&mut self) -> R<(bool, Option<QresyncParams>)> {
        let mut condstore = false;
        let mut qresync = None;
        if !self.try_byte(b' ') {
            return Ok((condstore, qresync));
        }
        self.expect(b'(', "'(' to start select parameters")?;
        loop {
            if self.keyword("CONDSTORE") {
                condstore = true;
            } else if self.keyword("QRESYNC") {
                self.sp()?;
                self.expect(b'(', "'(' after QRESYNC")?;
                let uid_validity = self.nz_number()?;
                self.sp()?;
                let modseq = self.number()?;
                let mut known_uids = None;
                let mut seq_match = None;
                if self.try_byte(b' ') {
                    if self.peek() != Some(b'(') {
                        known_uids = Some(self.sequence_set()?);
                        self.try_byte(b' ');
                    }
                    if self.try_byte(b'(') {
                        let seqs = self.sequence_set()?;
                        self.sp()?;
                        let uids = self.sequence_set()?;
                        self.expect(b')', "')'")?;
                        seq_match = Some((seqs, uids));
                    }
                }
                self.expect(b')', "')' to close QRESYNC")?;
                qresync = Some(QresyncParams {
                    uid_validity,
                    modseq,
                    known_uids,
                    seq_match,
                });
            } else {
                return Err("unknown SELECT parameter".into());
            }
            if self.try_byte(b')') {
                return Ok((condstore, qresync));
            }
            self.sp()?;
        }
    }

    fn list_command(&mut self) -> R<CommandBody> {
        self.sp()?;
        let mut options = ListOptions::default();
        if self.try_byte(b'(') {
            if !self.try_byte(b')') {
                loop {
                    let w = self.atom()?.to_ascii_uppercase();
                    match w.as_str() {
                        "SUBSCRIBED" => options.subscribed = true,
                        "SPECIAL-USE" => options.special_use = true,
                        "RECURSIVEMATCH" => options.recursive_match = true,
                        "REMOTE" => {}
                        other => return Err(format!("unknown LIST selection option {other}")),
                    }
                    if self.try_byte(b')') {
                        break;
                    }
                    self.sp()?;
                }
            }
            self.sp()?;
        }
        let reference = self.mailbox()?;
        self.sp()?;
        let patterns = if self.try_byte(b'(') {
            let mut v = Vec::new();
            loop {
                v.push(self.list_mailbox()?);
                if self.try_byte(b')') {
                    break;
                }
                self.sp()?;
            }
            v
        } else {
            vec![self.list_mailbox()?]
        };
        if self.try_byte(b' ') {
            if !self.keyword("RETURN") {
                return Err("expected RETURN".into());
            }
            self.sp()?;
            self.expect(b'(', "'(' after RETURN")?;
            if !self.try_byte(b')') {
                loop {
                    let w = self.atom()?.to_ascii_uppercase();
                    match w.as_str() {
                        "SUBSCRIBED" => options.return_subscribed = true,
                        "CHILDREN" => options.return_children = true,
                        "SPECIAL-USE" => options.return_special_use = true,
                        "STATUS" => {
                            self.sp()?;
                            options.return_status = Some(self.status_items()?);
                        }
                        other => return Err(format!("unknown LIST return option {other}")),
                    }
                    if self.try_byte(b')') {
                        break;
                    }
                    self.sp()?;
                }
            }
        }
        if options.recursive_match && !options.subscribed {
            return Err("RECURSIVEMATCH needs another selection option".into());
        }
        Ok(CommandBody::List {
            reference,
            patterns,
            options,
        })
    }

    fn append_command(&mut self) -> R<CommandBody> {
        self.sp()?;
        let mailbox = self.mailbox()?;
        let mut messages = Vec::new();
        while self.try_byte(b' ') {
            let mut flags = Vec::new();
            let mut date = None;
            if self.peek() == Some(b'(') {
                flags = self.flag_list()?;
                self.sp()?;
            }
            if self.peek() == Some(b'"') {
                date = Some(self.date_time()?);
                self.sp()?;
            }
            let (data, binary) = match self.peek() {
                Some(b'{' | b'~') => self.literal()?,
                _ => return Err("expected the message as a literal".into()),
            };
            messages.push(AppendMessage {
                flags,
                date,
                data,
                binary,
            });
        }
        if messages.is_empty() {
            return Err("APPEND needs a message".into());
        }
        Ok(CommandBody::Append { mailbox, messages })
    }

    fn sort_criteria(&mut self) -> R<Vec<SortCriterion>> {
        self.expect(b'(', "'(' to start sort criteria")?;
        let mut out = Vec::new();
        loop {
            let mut reverse = false;
            let mut w = self.atom()?.to_ascii_uppercase();
            if w == "REVERSE" {
                reverse = true;
                self.sp()?;
                w = self.atom()?.to_ascii_uppercase();
            }
            let key = match w.as_str() {
                "ARRIVAL" => SortKey::Arrival,
                "CC" => SortKey::Cc,
                "DATE" => SortKey::Date,
                "FROM" => SortKey::From,
                "SIZE" => SortKey::Size,
                "SUBJECT" => SortKey::Subject,
                "TO" => SortKey::To,
                "DISPLAYFROM" => SortKey::DisplayFrom,
                "DISPLAYTO" => SortKey::DisplayTo,
                other => return Err(format!("unknown sort key {other}")),
            };
            out.push(SortCriterion { reverse, key });
            if self.try_byte(b')') {
                return Ok(out);
            }
            self.sp()?;
        }
    }

    fn command_body(&mut self, uid: bool) -> R<CommandBody> {
        use CommandBody as C;
        let name = self.take_while(is_atom_char);
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        if uid
            && !matches!(
                name.as_str(),
                "FETCH" | "STORE" | "COPY" | "MOVE" | "SEARCH" | "SORT" | "THREAD" | "EXPUNGE"
            )
        {
            return Err(format!("UID {name} is not a command"));
        }
        let body = match name.as_str() {
            "CAPABILITY" => C::Capability,
            "NOOP" => C::Noop,
            "LOGOUT" => C::Logout,
            "STARTTLS" => C::StartTls,
            "AUTHENTICATE" => {
                self.sp()?;
                let mechanism = self.atom()?.to_ascii_uppercase();
                let initial = if self.try_byte(b' ') {
                    if self.try_byte(b'=') {
                        Some(Vec::new())
                    } else {
                        Some(
                            self.take_while(|c| {
                                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')
                            })
                            .to_vec(),
                        )
                    }
                } else {
                    None
                };
                C::Authenticate { mechanism, initial }
            }
            "LOGIN" => {
                self.sp()?;
                let user = self.astring()?;
                self.sp()?;
                let password = self.astring()?;
                C::Login { user, password }
            }
            "ENABLE" => {
                let mut caps = Vec::new();
                while self.try_byte(b' ') {
                    caps.push(self.atom()?.to_ascii_uppercase());
                }
                if caps.is_empty() {
                    return Err("ENABLE needs a capability".into());
                }
                C::Enable(caps)
            }
            "SELECT" | "EXAMINE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let (condstore, qresync) = self.select_params()?;
                C::Select {
                    mailbox,
                    read_only: name == "EXAMINE",
                    condstore,
                    qresync,
                }
            }
            "CREATE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let mut special_use = Vec::new();
                if self.try_byte(b' ') {
                    // RFC 6154 §3: CREATE name (USE (\Drafts ...))
                    self.expect(b'(', "'('")?;
                    if !self.keyword("USE") {
                        return Err("unknown CREATE parameter".into());
                    }
                    self.sp()?;
                    special_use = self.flag_list()?;
                    self.expect(b')', "')'")?;
                }
                C::Create {
                    mailbox,
                    special_use,
                }
            }
            "DELETE" => {
                self.sp()?;
                C::Delete(self.mailbox()?)
            }
            "RENAME" => {
                self.sp()?;
                let from = self.mailbox()?;
                self.sp()?;
                C::Rename {
                    from,
                    to: self.mailbox()?,
                }
            }
            "SUBSCRIBE" => {
                self.sp()?;
                C::Subscribe(self.mailbox()?)
            }
            "UNSUBSCRIBE" => {
                self.sp()?;
                C::Unsubscribe(self.mailbox()?)
            }
            "LIST" => self.list_command()?,
            "LSUB" => {
                self.sp()?;
                let reference = self.mailbox()?;
                self.sp()?;
                C::Lsub {
                    reference,
                    pattern: self.list_mailbox()?,
                }
            }
            "NAMESPACE" => C::Namespace,
            "STATUS" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                self.sp()?;
                C::Status {
                    mailbox,
                    items: self.status_items()?,
                }
            }
            "APPEND" => self.append_command()?,
            "IDLE" => C::Idle,
            "CHECK" => C::Check,
            "CLOSE" => C::Close,
            "UNSELECT" => C::Unselect,
            "EXPUNGE" => {
                if uid {
                    self.sp()?;
                    C::Expunge {
                        uids: Some(self.sequence_set()?),
                    }
                } else {
                    C::Expunge { uids: None }
                }
            }
            "SEARCH" => {
                self.sp()?;
                let ret = self.search_return_opts()?;
                let charset = if self.keyword("CHARSET") {
                    self.sp()?;
                    let c = self.astring_utf8()?;
                    self.sp()?;
                    Some(c)
                } else {
                    None
                };
                C::Search {
                    uid,
                    ret,
                    charset,
                    key: self.search_program()?,
                }
            }
            "SORT" => {
                self.sp()?;
                let ret = self.search_return_opts()?;
                let criteria = self.sort_criteria()?;
                self.sp()?;
                let charset = self.astring_utf8()?;
                self.sp()?;
                C::Sort {
                    uid,
                    ret,
                    criteria,
                    charset,
                    key: self.search_program()?,
                }
            }
            "THREAD" => {
                self.sp()?;
                let a = self.atom()?.to_ascii_uppercase();
                let algorithm = match a.as_str() {
                    "ORDEREDSUBJECT" => ThreadAlgorithm::OrderedSubject,
                    "REFERENCES" => ThreadAlgorithm::References,
                    other => return Err(format!("unknown thread algorithm {other}")),
                };
                self.sp()?;
                let charset = self.astring_utf8()?;
                self.sp()?;
                C::Thread {
                    uid,
                    algorithm,
                    charset,
                    key: self.search_program()?,
                }
            }
            "FETCH" => {
                self.sp()?;
                let set = self.sequence_set()?;
                self.sp()?;
                let items = self.fetch_atts()?;
                let mut changed_since = None;
                let mut vanished = false;
                if self.try_byte(b' ') {
                    self.expect(b'(', "'(' to start FETCH modifiers")?;
                    loop {
                        if self.keyword("CHANGEDSINCE") {
                            self.sp()?;
                            changed_since = Some(self.number()?);
                        } else if self.keyword("VANISHED") {
                            vanished = true;
                        } else {
                            return Err("unknown FETCH modifier".into());
                        }
                        if self.try_byte(b')') {
                            break;
                        }
                        self.sp()?;
                    }
                }
                if vanished && (!uid || changed_since.is_none()) {
                    return Err("VANISHED needs UID FETCH with CHANGEDSINCE".into());
                }
                C::Fetch {
                    uid,
                    set,
                    items,
                    changed_since,
                    vanished,
                }
            }
            "STORE" => {
                self.sp()?;
                let set = self.sequence_set()?;
                self.sp()?;
                let mut unchanged_since = None;
                if self.try_byte(b'(') {
                    if !self.keyword("UNCHANGEDSINCE") {
                        return Err("unknown STORE modifier".into());
                    }
                    self.sp()?;
                    unchanged_since = Some(self.number()?);
                    self.expect(b')', "')'")?;
                    self.sp()?;
                }
                let mode = if self.try_byte(b'+') {
                    StoreMode::Add
                } else if self.try_byte(b'-') {
                    StoreMode::Remove
                } else {
                    StoreMode::Replace
                };
                let item = self.atom()?.to_ascii_uppercase();
                let silent = match item.as_str() {
                    "FLAGS" => false,
                    "FLAGS.SILENT" => true,
                    _ => return Err("expected FLAGS or FLAGS.SILENT".into()),
                };
                self.sp()?;
                C::Store {
                    uid,
                    set,
                    unchanged_since,
                    mode,
                    silent,
                    flags: self.store_flags()?,
                }
            }
            "COPY" | "MOVE" => {
                self.sp()?;
                let set = self.sequence_set()?;
                self.sp()?;
                let mailbox = self.mailbox()?;
                if name == "COPY" {
                    C::Copy { uid, set, mailbox }
                } else {
                    C::Move { uid, set, mailbox }
                }
            }
            "ID" => {
                self.sp()?;
                let mut params = Vec::new();
                if !self.keyword("NIL") {
                    self.expect(b'(', "'(' or NIL")?;
                    if !self.try_byte(b')') {
                        loop {
                            let k = String::from_utf8_lossy(&self.string()?).into_owned();
                            self.sp()?;
                            let v = self
                                .nstring()?
                                .map(|v| String::from_utf8_lossy(&v).into_owned());
                            if params.len() < 30 {
                                params.push((k, v));
                            }
                            if self.try_byte(b')') {
                                break;
                            }
                            self.sp()?;
                        }
                    }
                }
                C::Id(params)
            }
            "COMPRESS" => {
                self.sp()?;
                C::Compress(self.atom()?.to_ascii_uppercase())
            }
            "GETQUOTA" => {
                self.sp()?;
                C::GetQuota(self.astring()?)
            }
            "GETQUOTAROOT" => {
                self.sp()?;
                C::GetQuotaRoot(self.mailbox()?)
            }
            "SETQUOTA" => {
                self.i = self.b.len();
                C::SetQuota
            }
            "" => return Err("expected a command name".into()),
            other => return Err(format!("unknown command {other}")),
        };
        Ok(body)
    }
}

/// Parses one complete command (without its final CRLF).
pub fn parse_command(buf: &[u8]) -> Result<Command, ParseError> {
    parse(P {
        b: buf,
        i: 0,
        depth: 0,
        lits: None,
    })
}

/// Parses a command as the connection framed it: the text with each literal's `{n}\r\n`
/// marker, and the literal contents apart, in order.
pub fn parse_framed(text: &[u8], literals: Vec<Vec<u8>>) -> Result<Command, ParseError> {
    parse(P {
        b: text,
        i: 0,
        depth: 0,
        lits: Some(literals.into()),
    })
}

fn parse(mut p: P<'_>) -> Result<Command, ParseError> {
    let tag = p.take_while(is_tag_char);
    if tag.is_empty() {
        return Err(ParseError {
            tag: None,
            message: "expected a tag".into(),
        });
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    let err = |message: String| ParseError {
        tag: Some(tag.clone()),
        message,
    };
    p.sp()
        .map_err(|_| err("expected a space after the tag".into()))?;
    let uid = p.keyword("UID");
    if uid {
        p.sp().map_err(err)?;
    }
    let body = p.command_body(uid).map_err(err)?;
    if !p.eof() {
        return Err(err(format!("unexpected characters at position {}", p.i)));
    }
    Ok(Command { tag, body })
}

/// Returns the length announced by a literal at the end of a line (`{n}`, `{n+}`, `~{n}`)
/// and whether it is non-synchronizing (RFC 7888), or None.
pub fn trailing_literal(line: &[u8]) -> Option<Result<(u64, bool), ()>> {
    let rest = line.strip_suffix(b"}")?;
    let open = rest.iter().rposition(|c| *c == b'{')?;
    let inner = &rest[open + 1..];
    let (digits, non_sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (inner, false),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(|n| (n, non_sync))
            .ok_or(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> CommandBody {
        parse_command(s.as_bytes())
            .unwrap_or_else(|e| panic!("{s}: {}", e.message))
            .body
    }

    fn bad(s: &str) -> String {
        parse_command(s.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{s} parsed"))
            .message
    }

    #[test]
    fn rfc9051_examples_parse() {
        assert_eq!(ok("a002 NOOP"), CommandBody::Noop);
        assert_eq!(ok("A001 CAPABILITY"), CommandBody::Capability);
        assert_eq!(
            ok("a001 LOGIN SMITH SESAME"),
            CommandBody::Login {
                user: b"SMITH".to_vec(),
                password: b"SESAME".to_vec()
            }
        );
        assert!(matches!(
            ok("A142 SELECT INBOX"),
            CommandBody::Select {
                read_only: false,
                ..
            }
        ));
        assert!(matches!(
            ok("A932 EXAMINE blurdybloop"),
            CommandBody::Select {
                read_only: true,
                ..
            }
        ));
        assert!(matches!(ok("A682 LIST \"\" *"), CommandBody::List { .. }));
        assert!(matches!(
            ok("A042 STATUS blurdybloop (UIDNEXT MESSAGES)"),
            CommandBody::Status { .. }
        ));
        assert!(matches!(
            ok("A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])"),
            CommandBody::Fetch { .. }
        ));
        assert!(matches!(
            ok("A003 STORE 2:4 +FLAGS (\\Deleted)"),
            CommandBody::Store {
                mode: StoreMode::Add,
                ..
            }
        ));
        assert!(matches!(
            ok("A999 UID FETCH 4827313:4828442 FLAGS"),
            CommandBody::Fetch { uid: true, .. }
        ));
        assert!(matches!(
            ok("A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\""),
            CommandBody::Search { .. }
        ));
        assert!(matches!(
            ok("a UID EXPUNGE 3000:3002"),
            CommandBody::Expunge { uids: Some(_) }
        ));
    }

    #[test]
    fn literals_and_append() {
        let cmd = parse_command(
            b"A003 APPEND saved-messages (\\Seen) \"17-Jul-1996 02:44:25 -0700\" {5}\r\nhello",
        )
        .unwrap();
        match cmd.body {
            CommandBody::Append { mailbox, messages } => {
                assert_eq!(mailbox, b"saved-messages");
                assert_eq!(messages.len(), 1);
                assert_eq!(messages[0].data, b"hello");
                assert_eq!(messages[0].flags, vec!["\\Seen".to_string()]);
                let (ts, off) = messages[0].date.unwrap();
                assert_eq!(off, -420);
                assert_eq!(ts, 837_596_665);
            }
            other => panic!("{other:?}"),
        }
        // MULTIAPPEND and LITERAL+.
        match ok("A APPEND INBOX {1+}\r\na (\\Seen) {2+}\r\nbc") {
            CommandBody::Append { messages, .. } => assert_eq!(messages.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(bad("A APPEND INBOX {10}\r\nshort").contains("shorter"));
    }

    #[test]
    fn search_keys_and_nesting() {
        match ok("A SEARCH OR (SEEN FLAGGED) NOT UID 1:5,7 HEADER X-Foo bar") {
            CommandBody::Search {
                key: SearchKey::And(keys),
                ..
            } => assert_eq!(keys.len(), 2),
            other => panic!("{other:?}"),
        }
        let deep = format!("A SEARCH {}ALL{}", "(".repeat(40), ")".repeat(40));
        assert!(bad(&deep).contains("nested deeper"));
        assert!(bad("A SEARCH FOOBAR").contains("unknown search key"));
        assert!(matches!(
            ok("A SEARCH CHARSET UTF-8 BODY \"x\""),
            CommandBody::Search {
                charset: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn sections_and_partials() {
        match ok("A FETCH 1 (BODY.PEEK[1.2.MIME] BODY[]<0.100> BINARY.PEEK[1] BINARY.SIZE[2] BODY[3.HEADER.FIELDS.NOT (A B)])") {
            CommandBody::Fetch { items, .. } => {
                assert_eq!(items[0], FetchAtt::BodySection { peek: true, section: Section { part: vec![1, 2], text: Some(SectionText::Mime) }, partial: None });
                assert_eq!(items[1], FetchAtt::BodySection { peek: false, section: Section::default(), partial: Some((0, 100)) });
                assert_eq!(items[2], FetchAtt::Binary { peek: true, part: vec![1], partial: None });
                assert_eq!(items[3], FetchAtt::BinarySize(vec![2]));
                assert!(matches!(&items[4], FetchAtt::BodySection { section: Section { part, text: Some(SectionText::HeaderFieldsNot(f)) }, .. } if part == &vec![3] && f.len() == 2));
            }
            other => panic!("{other:?}"),
        }
        assert!(bad("A FETCH 1 BODY[MIME]").contains("MIME needs a part"));
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        assert!(bad("A FROBNICATE").contains("unknown command"));
        assert_eq!(parse_command(b"").unwrap_err().tag, None);
        assert!(bad("A LOGIN user").contains("space"));
        assert!(bad("A FETCH 0 FLAGS").contains("sequence set"));
        assert!(bad("A UID LOGIN a b").contains("not a command"));
        assert!(bad("A NOOP extra").contains("unexpected characters"));
        assert!(bad("A LOGIN \"unterminated").contains("unterminated"));
    }

    #[test]
    fn trailing_literal_detection() {
        assert_eq!(
            trailing_literal(b"A APPEND INBOX {12}"),
            Some(Ok((12, false)))
        );
        assert_eq!(
            trailing_literal(b"A APPEND INBOX {12+}"),
            Some(Ok((12, true)))
        );
        assert_eq!(
            trailing_literal(b"A APPEND INBOX ~{3}"),
            Some(Ok((3, false)))
        );
        assert_eq!(trailing_literal(b"A NOOP"), None);
        assert_eq!(
            trailing_literal(b"A X {99999999999999999999}"),
            Some(Err(()))
        );
    }

    #[test]
    fn sequence_sets() {
        match ok("A FETCH 1:3,5,*:9 UID") {
            CommandBody::Fetch { set, .. } => {
                assert!(
                    set.contains(2, 10)
                        && set.contains(5, 10)
                        && set.contains(10, 10)
                        && !set.contains(4, 10)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
