//! Mailbox names, special-use roles (RFC 6154) and message flags (RFC 9051 §2.3.2).

use std::fmt;

/// Hierarchy delimiter of every Coffer mailbox name (as Dovecot's default with Maildir++
/// layouts shown to clients as `/`).
pub const DELIMITER: char = '/';
/// Upper bound on the UTF-8 length of a whole mailbox name.
pub const MAX_NAME_BYTES: usize = 512;
/// Upper bound on hierarchy depth.
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxNameError {
    #[error("mailbox name is empty")]
    Empty,
    #[error("mailbox name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("mailbox name is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("mailbox name has an empty hierarchy level")]
    EmptyLevel,
    #[error("mailbox name contains a control character or a wildcard (* or %)")]
    BadCharacter,
}

/// A validated mailbox name in Unicode (NFC is the caller's concern: IMAP gives UTF-8 or
/// modified UTF-7, decoded in the protocol layer). `INBOX` is case-insensitive and always
/// stored as `INBOX` (RFC 9051 §5.1).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxName(String);

impl MailboxName {
    pub fn new(raw: &str) -> Result<Self, MailboxNameError> {
        if raw.is_empty() {
            return Err(MailboxNameError::Empty);
        }
        if raw.len() > MAX_NAME_BYTES {
            return Err(MailboxNameError::TooLong);
        }
        if raw.chars().any(|c| c.is_control() || c == '*' || c == '%') {
            return Err(MailboxNameError::BadCharacter);
        }
        let levels: Vec<&str> = raw.split(DELIMITER).collect();
        if levels.len() > MAX_DEPTH {
            return Err(MailboxNameError::TooDeep);
        }
        if levels.iter().any(|l| l.is_empty()) {
            return Err(MailboxNameError::EmptyLevel);
        }
        let mut name = String::with_capacity(raw.len());
        for (i, level) in levels.iter().enumerate() {
            if i > 0 {
                name.push(DELIMITER);
            }
            if i == 0 && level.eq_ignore_ascii_case("INBOX") {
                name.push_str("INBOX");
            } else {
                name.push_str(level);
            }
        }
        Ok(MailboxName(name))
    }

    pub fn inbox() -> Self {
        MailboxName("INBOX".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_inbox(&self) -> bool {
        self.0 == "INBOX"
    }

    /// The parent name, if this name has one.
    pub fn parent(&self) -> Option<MailboxName> {
        self.0
            .rfind(DELIMITER)
            .map(|i| MailboxName(self.0[..i].to_string()))
    }

    /// True if `self` is a strict descendant of `ancestor`.
    pub fn is_under(&self, ancestor: &MailboxName) -> bool {
        self.0.len() > ancestor.0.len()
            && self.0.starts_with(&ancestor.0)
            && self.0[ancestor.0.len()..].starts_with(DELIMITER)
    }
}

impl fmt::Debug for MailboxName {
    // Mailbox names are user content: a Debug print must never put one in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailboxName(<{} bytes>)", self.0.len())
    }
}

/// Special-use roles (RFC 6154 §2) given to the mailboxes a new user starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    All,
    Archive,
    Drafts,
    Flagged,
    Junk,
    Sent,
    Trash,
}

impl SpecialUse {
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::All => "\\All",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Flagged => "\\Flagged",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            SpecialUse::All => 1,
            SpecialUse::Archive => 2,
            SpecialUse::Drafts => 3,
            SpecialUse::Flagged => 4,
            SpecialUse::Junk => 5,
            SpecialUse::Sent => 6,
            SpecialUse::Trash => 7,
        }
    }
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => SpecialUse::All,
            2 => SpecialUse::Archive,
            3 => SpecialUse::Drafts,
            4 => SpecialUse::Flagged,
            5 => SpecialUse::Junk,
            6 => SpecialUse::Sent,
            7 => SpecialUse::Trash,
            _ => return None,
        })
    }
    /// The mailboxes every new account gets, in the order Dovecot's example config lists them.
    pub fn defaults() -> [(&'static str, SpecialUse); 5] {
        [
            ("Drafts", SpecialUse::Drafts),
            ("Sent", SpecialUse::Sent),
            ("Trash", SpecialUse::Trash),
            ("Junk", SpecialUse::Junk),
            ("Archive", SpecialUse::Archive),
        ]
    }
}

/// A stored message flag: a system flag or a keyword (RFC 9051 §2.3.2). `\Recent` is a
/// session property in IMAP4rev1 and is never stored.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    Keyword(String),
}

/// Longest keyword accepted, in bytes.
pub const MAX_KEYWORD_BYTES: usize = 128;

impl Flag {
    /// Parses `\Seen` style system flags (case-insensitive) or a keyword atom.
    pub fn parse(s: &str) -> Option<Flag> {
        if let Some(sys) = s.strip_prefix('\\') {
            return match sys.to_ascii_lowercase().as_str() {
                "seen" => Some(Flag::Seen),
                "answered" => Some(Flag::Answered),
                "flagged" => Some(Flag::Flagged),
                "deleted" => Some(Flag::Deleted),
                "draft" => Some(Flag::Draft),
                _ => None,
            };
        }
        let atom_ok = !s.is_empty()
            && s.len() <= MAX_KEYWORD_BYTES
            && s.bytes()
                .all(|b| b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b));
        atom_ok.then(|| Flag::Keyword(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Flag::Seen => "\\Seen",
            Flag::Answered => "\\Answered",
            Flag::Flagged => "\\Flagged",
            Flag::Deleted => "\\Deleted",
            Flag::Draft => "\\Draft",
            Flag::Keyword(k) => k,
        }
    }
}

impl fmt::Debug for Flag {
    // Keywords can be user content; keep them out of Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flag::Keyword(k) => write!(f, "Keyword(<{} bytes>)", k.len()),
            other => f.write_str(other.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_is_case_insensitive_only_at_top_level() {
        assert_eq!(MailboxName::new("inbox").unwrap().as_str(), "INBOX");
        assert_eq!(MailboxName::new("iNbOx/Sub").unwrap().as_str(), "INBOX/Sub");
        assert_eq!(
            MailboxName::new("Work/inbox").unwrap().as_str(),
            "Work/inbox"
        );
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        assert_eq!(MailboxName::new(""), Err(MailboxNameError::Empty));
        assert_eq!(MailboxName::new("a//b"), Err(MailboxNameError::EmptyLevel));
        assert_eq!(MailboxName::new("/a"), Err(MailboxNameError::EmptyLevel));
        assert_eq!(MailboxName::new("a*"), Err(MailboxNameError::BadCharacter));
        assert_eq!(
            MailboxName::new("a\nb"),
            Err(MailboxNameError::BadCharacter)
        );
        assert_eq!(
            MailboxName::new(&"x".repeat(MAX_NAME_BYTES + 1)),
            Err(MailboxNameError::TooLong)
        );
        assert_eq!(
            MailboxName::new(&vec!["a"; MAX_DEPTH + 1].join("/")),
            Err(MailboxNameError::TooDeep)
        );
    }

    #[test]
    fn hierarchy_helpers() {
        let n = MailboxName::new("A/B/C").unwrap();
        assert_eq!(n.parent().unwrap().as_str(), "A/B");
        assert!(n.is_under(&MailboxName::new("A").unwrap()));
        assert!(
            !MailboxName::new("AB")
                .unwrap()
                .is_under(&MailboxName::new("A").unwrap())
        );
    }

    #[test]
    fn flags_parse() {
        assert_eq!(Flag::parse("\\SEEN"), Some(Flag::Seen));
        assert_eq!(Flag::parse("$Junk"), Some(Flag::Keyword("$Junk".into())));
        assert_eq!(Flag::parse("\\Recent"), None);
        assert_eq!(Flag::parse("bad keyword"), None);
        assert_eq!(Flag::parse(""), None);
    }
}
