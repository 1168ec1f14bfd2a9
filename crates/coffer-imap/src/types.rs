//! The IMAP command syntax tree (RFC 9051 §9 and the extensions Coffer supports), as the
//! parser produces it. Names follow the RFC's ABNF rules.

/// A number or `*` in a sequence set (RFC 9051 §9 "seq-number").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqNumber {
    Value(u32),
    /// `*`: the largest number in use.
    Largest,
}

/// `sequence-set` (RFC 9051 §9): ranges, each inclusive and in either order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<(SeqNumber, SeqNumber)>);

impl SequenceSet {
    /// Whether `v` is in the set, with `*` standing for `largest` (the highest sequence
    /// number or UID in use).
    pub fn contains(&self, v: u32, largest: u32) -> bool {
        self.0.iter().any(|(a, b)| {
            let a = match a {
                SeqNumber::Value(x) => *x,
                SeqNumber::Largest => largest,
            };
            let b = match b {
                SeqNumber::Value(x) => *x,
                SeqNumber::Largest => largest,
            };
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            v >= lo && v <= hi
        })
    }

    /// The set as sorted, disjoint, inclusive ranges, with `*` standing for `largest`: the
    /// members can be visited without testing every number in use.
    pub fn ranges(&self, largest: u32) -> Vec<(u32, u32)> {
        let value = |n: &SeqNumber| match n {
            SeqNumber::Value(x) => *x,
            SeqNumber::Largest => largest,
        };
        let mut spans: Vec<(u32, u32)> = self
            .0
            .iter()
            .map(|(a, b)| {
                let (a, b) = (value(a), value(b));
                (a.min(b), a.max(b))
            })
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(spans.len());
        for (lo, hi) in spans {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    }
}

pub use coffer_mail::mime::{Section, SectionText};

/// One FETCH data item (RFC 9051 §6.4.5, RFC 3516 BINARY, RFC 7162 MODSEQ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchAtt {
    Uid,
    Flags,
    InternalDate,
    Rfc822Size,
    Envelope,
    /// BODYSTRUCTURE (with extension data).
    BodyStructure,
    /// BODY without a section: BODYSTRUCTURE without extension data.
    Body,
    BodySection {
        peek: bool,
        section: Section,
        /// `<offset.length>`
        partial: Option<(u32, u32)>,
    },
    Binary {
        peek: bool,
        part: Vec<u32>,
        partial: Option<(u32, u32)>,
    },
    BinarySize(Vec<u32>),
    ModSeq,
    /// RFC822 = BODY[], RFC822.HEADER = BODY.PEEK[HEADER], RFC822.TEXT = BODY[TEXT].
    Rfc822,
    Rfc822Header,
    Rfc822Text,
}

/// SEARCH keys (RFC 9051 §6.4.4, RFC 7162 MODSEQ, RFC 5032 OLDER/YOUNGER).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchKey {
    All,
    Answered,
    Deleted,
    Draft,
    Flagged,
    Seen,
    Unanswered,
    Undeleted,
    Undraft,
    Unflagged,
    Unseen,
    New,
    Old,
    Recent,
    Keyword(String),
    Unkeyword(String),
    /// Days since the epoch (UTC date) for date comparisons.
    Before(i64),
    On(i64),
    Since(i64),
    SentBefore(i64),
    SentOn(i64),
    SentSince(i64),
    Larger(u64),
    Smaller(u64),
    Bcc(String),
    Cc(String),
    From(String),
    To(String),
    Subject(String),
    Header(String, String),
    Body(String),
    Text(String),
    Uid(SequenceSet),
    SequenceSet(SequenceSet),
    ModSeq(u64),
    Older(u64),
    Younger(u64),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
}

/// STORE's operation (RFC 9051 §6.4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// STATUS data items (RFC 9051 §6.3.11, RFC 8438 SIZE, RFC 7162 HIGHESTMODSEQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
    HighestModSeq,
    AppendLimit,
}

/// ESEARCH return options (RFC 4731).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchReturn {
    Min,
    Max,
    All,
    Count,
}

/// SORT criteria (RFC 5256 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortCriterion {
    pub reverse: bool,
    pub key: SortKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Arrival,
    Cc,
    Date,
    From,
    Size,
    Subject,
    To,
    DisplayFrom,
    DisplayTo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadAlgorithm {
    OrderedSubject,
    References,
}

/// One message of an APPEND (several with MULTIAPPEND, RFC 3502).
#[derive(Clone, PartialEq, Eq)]
pub struct AppendMessage {
    pub flags: Vec<String>,
    /// INTERNALDATE: seconds since the epoch and zone offset in minutes.
    pub date: Option<(i64, i16)>,
    pub data: Vec<u8>,
    /// Sent as literal8 (`~{n}`, RFC 3516).
    pub binary: bool,
}

impl std::fmt::Debug for AppendMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppendMessage(<{} bytes>)", self.data.len())
    }
}

/// QRESYNC parameters of SELECT/EXAMINE (RFC 7162 §3.2.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QresyncParams {
    pub uid_validity: u32,
    pub modseq: u64,
    pub known_uids: Option<SequenceSet>,
    /// (sequence numbers, UIDs) match data.
    pub seq_match: Option<(SequenceSet, SequenceSet)>,
}

/// LIST-EXTENDED selection and return options (RFC 5258, RFC 6154, RFC 5819).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub subscribed: bool,
    pub special_use: bool,
    pub recursive_match: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    pub return_status: Option<Vec<StatusItem>>,
}

/// A parsed command. Mailbox names are raw bytes: the session decodes them (modified
/// UTF-7 or UTF-8) depending on what the client enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandBody {
    Capability,
    Noop,
    Logout,
    StartTls,
    Authenticate {
        mechanism: String,
        /// SASL-IR initial response (RFC 4959), base64 as sent; `=` means empty.
        initial: Option<Vec<u8>>,
    },
    Login {
        user: Vec<u8>,
        password: Vec<u8>,
    },
    Enable(Vec<String>),
    Select {
        mailbox: Vec<u8>,
        read_only: bool,
        condstore: bool,
        qresync: Option<QresyncParams>,
    },
    Create {
        mailbox: Vec<u8>,
        special_use: Vec<String>,
    },
    Delete(Vec<u8>),
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
    List {
        reference: Vec<u8>,
        patterns: Vec<Vec<u8>>,
        options: ListOptions,
    },
    Lsub {
        reference: Vec<u8>,
        pattern: Vec<u8>,
    },
    Namespace,
    Status {
        mailbox: Vec<u8>,
        items: Vec<StatusItem>,
    },
    Append {
        mailbox: Vec<u8>,
        messages: Vec<AppendMessage>,
    },
    Idle,
    Check,
    Close,
    Unselect,
    Expunge {
        uids: Option<SequenceSet>,
    },
    Search {
        uid: bool,
        ret: Option<Vec<SearchReturn>>,
        charset: Option<String>,
        key: SearchKey,
    },
    Sort {
        uid: bool,
        ret: Option<Vec<SearchReturn>>,
        criteria: Vec<SortCriterion>,
        charset: String,
        key: SearchKey,
    },
    Thread {
        uid: bool,
        algorithm: ThreadAlgorithm,
        charset: String,
        key: SearchKey,
    },
    Fetch {
        uid: bool,
        set: SequenceSet,
        items: Vec<FetchAtt>,
        changed_since: Option<u64>,
        vanished: bool,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        unchanged_since: Option<u64>,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
    },
    Copy {
        uid: bool,
        set: SequenceSet,
        mailbox: Vec<u8>,
    },
    Move {
        uid: bool,
        set: SequenceSet,
        mailbox: Vec<u8>,
    },
    Id(Vec<(String, Option<String>)>),
    Compress(String),
    GetQuota(Vec<u8>),
    GetQuotaRoot(Vec<u8>),
    SetQuota,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub body: CommandBody,
}

impl CommandBody {
    /// The command's name for logs and errors (never its arguments: they can hold secrets).
    pub fn name(&self) -> &'static str {
        match self {
            CommandBody::Capability => "CAPABILITY",
            CommandBody::Noop => "NOOP",
            CommandBody::Logout => "LOGOUT",
            CommandBody::StartTls => "STARTTLS",
            CommandBody::Authenticate { .. } => "AUTHENTICATE",
            CommandBody::Login { .. } => "LOGIN",
            CommandBody::Enable(_) => "ENABLE",
            CommandBody::Select {
                read_only: false, ..
            } => "SELECT",
            CommandBody::Select {
                read_only: true, ..
            } => "EXAMINE",
            CommandBody::Create { .. } => "CREATE",
            CommandBody::Delete(_) => "DELETE",
            CommandBody::Rename { .. } => "RENAME",
            CommandBody::Subscribe(_) => "SUBSCRIBE",
            CommandBody::Unsubscribe(_) => "UNSUBSCRIBE",
            CommandBody::List { .. } => "LIST",
            CommandBody::Lsub { .. } => "LSUB",
            CommandBody::Namespace => "NAMESPACE",
            CommandBody::Status { .. } => "STATUS",
            CommandBody::Append { .. } => "APPEND",
            CommandBody::Idle => "IDLE",
            CommandBody::Check => "CHECK",
            CommandBody::Close => "CLOSE",
            CommandBody::Unselect => "UNSELECT",
            CommandBody::Expunge { .. } => "EXPUNGE",
            CommandBody::Search { .. } => "SEARCH",
            CommandBody::Sort { .. } => "SORT",
            CommandBody::Thread { .. } => "THREAD",
            CommandBody::Fetch { .. } => "FETCH",
            CommandBody::Store { .. } => "STORE",
            CommandBody::Copy { .. } => "COPY",
            CommandBody::Move { .. } => "MOVE",
            CommandBody::Id(_) => "ID",
            CommandBody::Compress(_) => "COMPRESS",
            CommandBody::GetQuota(_) => "GETQUOTA",
            CommandBody::GetQuotaRoot(_) => "GETQUOTAROOT",
            CommandBody::SetQuota => "SETQUOTA",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(spans: &[(u32, u32)]) -> SequenceSet {
        let n = |v: u32| {
            if v == 0 {
                SeqNumber::Largest
            } else {
                SeqNumber::Value(v)
            }
        };
        SequenceSet(spans.iter().map(|(a, b)| (n(*a), n(*b))).collect())
    }

    #[test]
    fn ranges_are_sorted_merged_and_resolve_star() {
        // 0 stands for `*` here.
        assert_eq!(
            set(&[(9, 7), (1, 2), (3, 3)]).ranges(20),
            vec![(1, 3), (7, 9)]
        );
        assert_eq!(set(&[(5, 0), (2, 6)]).ranges(10), vec![(2, 10)]);
        assert_eq!(set(&[(0, 0)]).ranges(4), vec![(4, 4)]);
        assert_eq!(set(&[(30, 0)]).ranges(4), vec![(4, 30)]);
        assert_eq!(
            set(&[(u32::MAX, u32::MAX), (1, 1)]).ranges(1),
            vec![(1, 1), (u32::MAX, u32::MAX)]
        );
    }

    #[test]
    fn ranges_hold_exactly_what_contains_accepts() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as u32
        };
        for _ in 0..500 {
            let spans: Vec<(u32, u32)> = (0..1 + next(5)).map(|_| (next(40), next(40))).collect();
            let s = set(&spans);
            let largest = 1 + next(35);
            let ranges = s.ranges(largest);
            for v in 1..=45 {
                let in_ranges = ranges.iter().any(|(lo, hi)| v >= *lo && v <= *hi);
                assert_eq!(
                    in_ranges,
                    s.contains(v, largest),
                    "{spans:?} * = {largest}, {v}"
                );
            }
            assert!(ranges.windows(2).all(|w| w[0].1 + 1 < w[1].0), "{ranges:?}");
        }
    }
}
