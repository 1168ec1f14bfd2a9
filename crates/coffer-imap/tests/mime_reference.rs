//! Compares Coffer's MIME FETCH answers (`coffer_imap::mime`) byte for byte with what a real
//! Dovecot 2.3 answered for the same messages.
//!
//! The reference is recorded by `scripts/dovecot-mime-reference OUTDIR` (which `scripts/test`
//! runs) from the messages in `tests/corpus/*.eml`: one directory per message, one file per
//! FETCH item, `<item>.txt` with the item's value exactly as Dovecot sent it (literal prefix
//! included) or `<item>.err` with the tagged NO/BAD answer. Spaces in item names are written
//! as `_` in the file names. The directory is named by `COFFER_DOVECOT_REFERENCE`; this test
//! fails (it never skips) when the variable is unset or the directory is missing.

use coffer_imap::mime::{self, BinaryError};
use coffer_imap::types::{Section, SectionText};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Items where Coffer deliberately answers differently from Dovecot, because Dovecot's
/// answer is wrong per the RFC: (message, item file stem, reason).
const ALLOWED_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "10-bad-content-type",
        "BINARY.SIZE[1]",
        UNKNOWN_CTE_ELSEWHERE,
    ),
    (
        "21-binary-and-unknown-cte",
        "BINARY.SIZE[1]",
        UNKNOWN_CTE_ELSEWHERE,
    ),
    (
        "21-binary-and-unknown-cte",
        "BINARY.SIZE[3]",
        UNKNOWN_CTE_ELSEWHERE,
    ),
    (
        "33-encoded-rfc822-and-params",
        "BINARY.SIZE[1]",
        "Dovecot answers BINARY.SIZE[1] 0 for a message/rfc822 part that claims base64, \
         while its BINARY[1] is 84 bytes; RFC 3516 §4.2 defines BINARY.SIZE as the size of \
         the decoded section, so Coffer answers 84, the length of its (and Dovecot's) \
         BINARY[1]",
    ),
];

/// Dovecot computes BINARY.SIZE by decoding the whole message, so one part with an unknown
/// Content-Transfer-Encoding makes BINARY.SIZE fail with UNKNOWN-CTE for every part, even
/// those whose BINARY[n] it answers. RFC 3516 §4.2 wants UNKNOWN-CTE only when the
/// section's own encoding is unknown: Coffer answers the length of BINARY[n].
const UNKNOWN_CTE_ELSEWHERE: &str = "Dovecot fails BINARY.SIZE[n] with UNKNOWN-CTE when any \
     other part has an unknown encoding although it answers BINARY[n]; RFC 3516 §4.2 \
     wants the size of the decoded section, which Coffer gives";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("COFFER_DOVECOT_REFERENCE").unwrap_or_else(|| {
        panic!(
            "COFFER_DOVECOT_REFERENCE is not set: record the Dovecot reference with \
             `scripts/dovecot-mime-reference /tmp/dovecot-ref` and run this test with \
             COFFER_DOVECOT_REFERENCE=/tmp/dovecot-ref (scripts/test does both)"
        )
    });
    let dir = PathBuf::from(dir);
    assert!(
        dir.is_dir(),
        "COFFER_DOVECOT_REFERENCE={} is not a directory: \
         run scripts/dovecot-mime-reference {} first",
        dir.display(),
        dir.display()
    );
    dir
}

/// `2.HEADER.FIELDS (SUBJECT FROM)` → Section.
fn parse_section(spec: &str) -> Section {
    let mut part = Vec::new();
    let mut rest = spec;
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        part.push(rest[..digits].parse().expect("part number"));
        rest = &rest[digits..];
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    let list = |s: &str| -> Vec<String> {
        s.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let text = if rest.is_empty() {
        None
    } else if rest == "HEADER" {
        Some(SectionText::Header)
    } else if rest == "TEXT" {
        Some(SectionText::Text)
    } else if rest == "MIME" {
        Some(SectionText::Mime)
    } else if let Some(l) = rest.strip_prefix("HEADER.FIELDS.NOT ") {
        Some(SectionText::HeaderFieldsNot(list(l)))
    } else if let Some(l) = rest.strip_prefix("HEADER.FIELDS ") {
        Some(SectionText::HeaderFields(list(l)))
    } else {
        panic!("unknown section text {rest:?}");
    };
    Section { part, text }
}

fn parse_part(spec: &str) -> Vec<u32> {
    if spec.is_empty() {
        return Vec::new();
    }
    spec.split('.')
        .map(|n| n.parse().expect("part number"))
        .collect()
}

fn literal(data: &[u8], literal8: bool) -> Vec<u8> {
    let mut out = format!("{}{{{}}}\r\n", if literal8 { "~" } else { "" }, data.len()).into_bytes();
    out.extend_from_slice(data);
    out
}

fn bracket(item: &str) -> &str {
    let open = item.find('[').expect("[");
    let close = item.rfind(']').expect("]");
    &item[open + 1..close]
}

/// Coffer's answer for `item`: Ok(value bytes) or Err(error text).
fn coffer_answer(raw: &[u8], item: &str) -> Result<Vec<u8>, String> {
    if item == "RFC822.SIZE" {
        Ok(mime::rfc822_size(raw).to_string().into_bytes())
    } else if item == "ENVELOPE" {
        Ok(mime::envelope(raw))
    } else if item == "BODYSTRUCTURE" {
        Ok(mime::body_structure(raw, true))
    } else if item == "BODY" {
        Ok(mime::body_structure(raw, false))
    } else if item.starts_with("BODY.PEEK[") {
        let data = mime::section(raw, &parse_section(bracket(item))).unwrap_or_default();
        Ok(literal(&data, false))
    } else if item.starts_with("BINARY.PEEK[") {
        match mime::binary_content(raw, &parse_part(bracket(item))) {
            Ok(c) => {
                assert_eq!(
                    mime::binary(raw, &parse_part(bracket(item))).as_deref(),
                    Ok(&c.data[..])
                );
                Ok(literal(&c.data, c.literal8))
            }
            // Dovecot answers a missing part with an empty literal.
            Err(BinaryError::NoSuchPart) => Ok(literal(b"", false)),
            Err(BinaryError::UnknownCte) => Err("NO [UNKNOWN-CTE]".into()),
        }
    } else if item.starts_with("BINARY.SIZE[") {
        match mime::binary_content(raw, &parse_part(bracket(item))) {
            Ok(c) => Ok(c.data.len().to_string().into_bytes()),
            Err(BinaryError::NoSuchPart) => Ok(b"0".to_vec()),
            Err(BinaryError::UnknownCte) => Err("NO [UNKNOWN-CTE]".into()),
        }
    } else {
        panic!("no Coffer answer for item {item:?}")
    }
}

fn escape(data: &[u8]) -> String {
    let mut s = String::new();
    for &c in data {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n\n        "),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    s
}

/// A readable account of how `ours` differs from `theirs`.
fn diff(theirs: &[u8], ours: &[u8]) -> String {
    let first = theirs
        .iter()
        .zip(ours)
        .position(|(a, b)| a != b)
        .unwrap_or(theirs.len().min(ours.len()));
    let from = first.saturating_sub(80);
    let to = |d: &[u8]| (first + 80).min(d.len());
    format!(
        "    first difference at byte {first} (Dovecot {} bytes, Coffer {} bytes)\n    \
         Dovecot: {}\n    Coffer:  {}\n    Dovecot (all): {}\n    Coffer (all):  {}\n",
        theirs.len(),
        ours.len(),
        escape(&theirs[from..to(theirs)]),
        escape(&ours[from..to(ours)]),
        escape(&theirs[..theirs.len().min(600)]),
        escape(&ours[..ours.len().min(600)]),
    )
}

#[test]
fn coffer_matches_dovecot_reference() {
    let reference = reference_dir();
    let mut corpus: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    corpus.sort();
    assert!(
        corpus.len() >= 15,
        "the corpus has only {} messages",
        corpus.len()
    );

    let mut compared = 0;
    let mut failures = Vec::new();
    let mut allowed = Vec::new();
    for path in &corpus {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let raw = std::fs::read(path).expect("corpus message");
        let dir = reference.join(&name);
        assert!(
            dir.is_dir(),
            "no Dovecot reference for {name} in {}: re-run scripts/dovecot-mime-reference",
            reference.display()
        );
        let mut items: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("reference dir")
            .map(|e| e.expect("reference entry").path())
            .collect();
        items.sort();
        assert!(
            items.len() >= 20,
            "only {} reference items for {name}",
            items.len()
        );
        for item_path in items {
            let stem = item_path
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ext = item_path
                .extension()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let item = stem.replace('_', " ");
            let expected = std::fs::read(&item_path).expect("reference item");
            let ours = coffer_answer(&raw, &item);
            compared += 1;
            let problem = match (ext.as_str(), &ours) {
                ("txt", Ok(ours)) if *ours == expected => None,
                ("txt", Ok(ours)) => Some(diff(&expected, ours)),
                ("txt", Err(e)) => Some(format!(
                    "    Dovecot answered {}\n    Coffer refused: {e}\n",
                    escape(&expected)
                )),
                ("err", Err(e)) if String::from_utf8_lossy(&expected).contains(&e[3..]) => None,
                ("err", _) => Some(format!(
                    "    Dovecot refused: {}    Coffer answered: {:?}\n",
                    String::from_utf8_lossy(&expected),
                    ours.map(|o| escape(&o))
                )),
                _ => panic!("unexpected reference file {}", item_path.display()),
            };
            let Some(problem) = problem else { continue };
            let report = format!("{name} {item}:\n{problem}");
            match ALLOWED_DIFFERENCES
                .iter()
                .find(|(m, i, _)| *m == name && *i == stem)
            {
                Some((_, _, reason)) => allowed.push(format!("{report}    allowed: {reason}\n")),
                None => failures.push(report),
            }
        }
    }
    for a in &allowed {
        eprintln!("deliberate difference from Dovecot:\n{a}");
    }
    assert!(compared > 0, "no reference items compared");
    assert!(
        failures.is_empty(),
        "{} of {compared} items differ from Dovecot:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{compared} items compared with Dovecot: {} identical, {} allowed differences",
        compared - allowed.len(),
        allowed.len()
    );
}
