//! Modified UTF-7 mailbox names (RFC 3501 §5.1.3), used by IMAP4rev1 clients that have not
//! enabled UTF8=ACCEPT (RFC 6855) or IMAP4rev2.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|x| *x == c).map(|p| p as u32)
}

/// Decodes a modified UTF-7 name. Refuses malformed input (RFC 3501 §5.1.3: "&" must be
/// followed by a valid base64 run and "-"; directly encoded characters must be printable
/// US-ASCII; a run must not encode characters that could be written directly).
pub fn decode(input: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if !(0x20..=0x7e).contains(&c) {
            return None;
        }
        if c != b'&' {
            out.push(c as char);
            i += 1;
            continue;
        }
        let end = i + 1 + input[i + 1..].iter().position(|x| *x == b'-')?;
        let run = &input[i + 1..end];
        i = end + 1;
        if run.is_empty() {
            out.push('&');
            continue;
        }
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut units = Vec::new();
        for &ch in run {
            bits = (bits << 6) | b64_value(ch)?;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push(((bits >> nbits) & 0xffff) as u16);
            }
        }
        // Leftover bits must be zero padding, fewer than 6.
        if nbits >= 6 || (bits & ((1 << nbits) - 1)) != 0 {
            return None;
        }
        let decoded = String::from_utf16(&units).ok()?;
        if decoded.is_empty() || decoded.chars().any(|ch| (' '..='~').contains(&ch)) {
            return None;
        }
        out.push_str(&decoded);
    }
    Some(out)
}

/// Encodes a Unicode name as modified UTF-7.
pub fn encode(input: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let mut bits = 0u32;
        let mut nbits = 0;
        for u in pending.drain(..) {
            bits = (bits << 16) | u as u32;
            nbits += 16;
            while nbits >= 6 {
                nbits -= 6;
                out.push(B64[((bits >> nbits) & 63) as usize] as char);
            }
        }
        if nbits > 0 {
            out.push(B64[((bits << (6 - nbits)) & 63) as usize] as char);
        }
        out.push('-');
    };
    for ch in input.chars() {
        if (' '..='~').contains(&ch) {
            flush(&mut pending, &mut out);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(ch.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_example() {
        // RFC 3501 §5.1.3: "~peter/mail/台北/日本語"
        let name = "~peter/mail/\u{53f0}\u{5317}/\u{65e5}\u{672c}\u{8a9e}";
        let enc = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        assert_eq!(encode(name), enc);
        assert_eq!(decode(enc.as_bytes()).unwrap(), name);
    }

    #[test]
    fn ampersand_and_round_trips() {
        assert_eq!(encode("A&B"), "A&-B");
        assert_eq!(decode(b"A&-B").unwrap(), "A&B");
        for s in ["Entwürfe", "Отправленные", "📧 mail", "a&b/ü&"] {
            assert_eq!(decode(encode(s).as_bytes()).unwrap(), s);
        }
    }

    #[test]
    fn invalid_input_is_refused() {
        assert_eq!(decode(b"&U,BTFw"), None, "unterminated");
        assert_eq!(decode(b"&AGE-"), None, "encodes a printable ASCII letter");
        assert_eq!(decode(b"&!!-"), None, "not base64");
        assert_eq!(decode("é".as_bytes()), None, "8-bit");
        assert_eq!(decode(b"&2D0-"), None, "lone surrogate");
    }
}
