//! Encoding of response values (RFC 9051 §4 data formats): quoted strings, literals,
//! nstrings, mailbox names in the client's chosen form, flag lists and date-times.

/// Appends `s` as a quoted string if it can be one, else as a literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() < 1024 && s.iter().all(|c| (0x20..0x7f).contains(c));
    if quotable {
        out.push(b'"');
        for &c in s {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends a literal `{n}\r\n<bytes>`.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// Appends a literal8 `~{n}\r\n<bytes>` (RFC 3516) when the data holds NUL bytes.
pub fn literal_or_literal8(out: &mut Vec<u8>, s: &[u8]) {
    if s.contains(&0) {
        out.push(b'~');
    }
    literal(out, s);
}

pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends a mailbox name: UTF-8 for clients that enabled it (IMAP4rev2 or UTF8=ACCEPT),
/// modified UTF-7 otherwise.
pub fn mailbox(out: &mut Vec<u8>, name: &str, utf8: bool) {
    if utf8 {
        string(out, name.as_bytes());
    } else {
        string(out, crate::mutf7::encode(name).as_bytes());
    }
}

pub fn flag_list<'a>(out: &mut Vec<u8>, flags: impl IntoIterator<Item = &'a str>) {
    out.push(b'(');
    let mut first = true;
    for f in flags {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(f.as_bytes());
    }
    out.push(b')');
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Civil date (y, m, d) from days since the epoch.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// INTERNALDATE as `"dd-Mon-yyyy hh:mm:ss +zzzz"` (RFC 9051 §9 date-time).
pub fn date_time(timestamp: i64, offset_minutes: i16) -> String {
    let local = timestamp + offset_minutes as i64 * 60;
    let (y, m, d) = civil_from_days(local.div_euclid(86_400));
    let secs = local.rem_euclid(86_400);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = (offset_minutes as i32).abs();
    format!(
        "\"{d:02}-{}-{y:04} {:02}:{:02}:{:02} {sign}{:02}{:02}\"",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        off / 60,
        off % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_quote_or_literal() {
        let mut o = Vec::new();
        string(&mut o, b"a \"b\" \\c");
        assert_eq!(o, b"\"a \\\"b\\\" \\\\c\"");
        let mut o = Vec::new();
        string(&mut o, "ü".as_bytes());
        assert_eq!(o, b"{2}\r\n\xc3\xbc");
        let mut o = Vec::new();
        string(&mut o, b"line\r\nbreak");
        assert!(o.starts_with(b"{11}\r\n"));
    }

    #[test]
    fn date_time_format() {
        assert_eq!(
            date_time(837_596_665, -420),
            "\"17-Jul-1996 02:44:25 -0700\""
        );
        assert_eq!(date_time(0, 0), "\"01-Jan-1970 00:00:00 +0000\"");
        assert_eq!(
            date_time(1_700_000_000, 330),
            "\"15-Nov-2023 03:43:20 +0530\""
        );
    }
}
