//! SORT and THREAD (RFC 5256) with DISPLAYFROM/DISPLAYTO (RFC 5957): base subject
//! extraction, sort keys, ORDEREDSUBJECT and REFERENCES threading.

use crate::types::{SortCriterion, SortKey, ThreadAlgorithm};
use std::collections::HashMap;

/// What sorting and threading need of one message.
#[derive(Clone, Debug, Default)]
pub struct SortData {
    pub id: u32,
    /// Sequence number, for ARRIVAL ties and stable order.
    pub seq: u32,
    pub internal_date: i64,
    pub size: u64,
    /// Sent date (Date header), or the internal date when missing/invalid (RFC 5256 §3).
    pub date: i64,
    pub base_subject: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub display_from: String,
    pub display_to: String,
    pub message_id: Option<String>,
    pub references: Vec<String>,
    /// True if the subject had "Re:"/"Fwd:" style prefixes (a reply).
    pub is_reply: bool,
}

/// Base subject per RFC 5256 §2.1 (decoded, whitespace collapsed, case folded).
pub fn base_subject(subject: &str) -> (String, bool) {
    let mut s: String = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut reply = false;
    loop {
        let before = s.clone();
        // (2) trailing "(fwd)" and whitespace
        loop {
            let t = s.trim_end();
            if t.len() >= 5 && t[t.len() - 5..].eq_ignore_ascii_case("(fwd)") {
                s = t[..t.len() - 5].to_string();
                reply = true;
            } else {
                s = t.to_string();
                break;
            }
        }
        // (3)/(4) leading subj-refwd and subj-blob
        loop {
            let inner = s.clone();
            let t = inner.trim_start();
            let lower = t.to_ascii_lowercase();
            let mut rest = None;
            for prefix in ["re", "fwd", "fw"] {
                if let Some(after) = lower.strip_prefix(prefix) {
                    let mut a = after.trim_start();
                    // optional [blob]
                    if a.starts_with('[') {
                        if let Some(end) = a.find(']') {
                            a = a[end + 1..].trim_start();
                        }
                    }
                    if let Some(after_colon) = a.strip_prefix(':') {
                        rest = Some(t.len() - after_colon.len());
                        break;
                    }
                }
            }
            if let Some(cut) = rest {
                s = t[cut..].to_string();
                reply = true;
                continue;
            }
            // A leading [blob] is removed if something remains after it.
            if t.starts_with('[') {
                if let Some(end) = t.find(']') {
                    let after = t[end + 1..].trim_start();
                    if !after.is_empty() {
                        s = after.to_string();
                        continue;
                    }
                }
            }
            s = t.to_string();
            break;
        }
        // (6) [fwd: ... ]
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("[fwd:") && s.ends_with(']') {
            s = s[5..s.len() - 1].trim().to_string();
            reply = true;
        }
        if s == before {
            break;
        }
    }
    (s.to_lowercase(), reply)
}

fn first_mailbox(addr: Option<&mail_parser::Address<'_>>) -> (String, String) {
    let Some(a) = addr.and_then(|a| a.first()) else {
        return (String::new(), String::new());
    };
    let address = a.address().unwrap_or("");
    let local = address.split('@').next().unwrap_or("").to_lowercase();
    // RFC 5957 §4: the display name, or the address when there is none.
    let display = a
        .name()
        .map(str::to_string)
        .unwrap_or_else(|| address.to_string())
        .to_lowercase();
    (local, display)
}

fn ids(v: &mail_parser::HeaderValue<'_>) -> Vec<String> {
    match v {
        mail_parser::HeaderValue::Text(t) => vec![t.to_string()],
        mail_parser::HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// Extracts sort/thread data from a message.
pub fn sort_data(id: u32, seq: u32, internal_date: i64, size: u64, raw: &[u8]) -> SortData {
    let parsed = mail_parser::MessageParser::default().parse_headers(raw);
    let mut d = SortData {
        id,
        seq,
        internal_date,
        size,
        date: internal_date,
        ..Default::default()
    };
    let Some(m) = parsed else { return d };
    if let Some(date) = m.date() {
        d.date = date.to_timestamp();
    }
    let (base, reply) = base_subject(m.subject().unwrap_or(""));
    d.base_subject = base;
    d.is_reply = reply;
    (d.from, d.display_from) = first_mailbox(m.from());
    (d.to, d.display_to) = first_mailbox(m.to());
    d.cc = first_mailbox(m.cc()).0;
    d.message_id = m.message_id().map(str::to_string);
    d.references = ids(m.references());
    if d.references.is_empty() {
        d.references = ids(m.in_reply_to()).into_iter().take(1).collect();
    }
    d
}

/// Orders messages by the criteria; ties fall back to sequence order (RFC 5256 §3).
pub fn sort(mut items: Vec<SortData>, criteria: &[SortCriterion]) -> Vec<u32> {
    items.sort_by(|a, b| {
        for c in criteria {
            let ord = match c.key {
                SortKey::Arrival => a.internal_date.cmp(&b.internal_date),
                SortKey::Date => a.date.cmp(&b.date),
                SortKey::Size => a.size.cmp(&b.size),
                SortKey::Subject => a.base_subject.cmp(&b.base_subject),
                SortKey::From => a.from.cmp(&b.from),
                SortKey::To => a.to.cmp(&b.to),
                SortKey::Cc => a.cc.cmp(&b.cc),
                SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
                SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
            };
            let ord = if c.reverse { ord.reverse() } else { ord };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        a.seq.cmp(&b.seq)
    });
    items.into_iter().map(|d| d.id).collect()
}

/// A thread tree node: a message id (None for a dummy) and children.
#[derive(Debug, Clone)]
struct Node {
    id: Option<u32>,
    date: i64,
    seq: u32,
    children: Vec<Node>,
}

fn render(nodes: &[Node], out: &mut String) {
    for n in nodes {
        out.push('(');
        render_chain(n, out);
        out.push(')');
    }
}

/// A node followed by its descendants: one child continues the chain, several children
/// each get parentheses (RFC 5256 §4 thread-list syntax).
fn render_chain(n: &Node, out: &mut String) {
    let mut first = true;
    if let Some(id) = n.id {
        out.push_str(&id.to_string());
        first = false;
    }
    match n.children.len() {
        0 => {}
        1 if n.id.is_some() => {
            out.push(' ');
            render_chain(&n.children[0], out);
        }
        _ => {
            if !first {
                out.push(' ');
            }
            render(&n.children, out);
        }
    }
}

fn earliest(n: &Node) -> (i64, u32) {
    let mut best = (n.date, n.seq);
    if n.id.is_none() {
        best = (i64::MAX, u32::MAX);
    }
    for c in &n.children {
        best = best.min(earliest(c));
    }
    best
}

fn sort_tree(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        sort_tree(&mut n.children);
    }
    nodes.sort_by_key(earliest);
}

/// THREAD: the untagged response's thread list.
pub fn thread(items: Vec<SortData>, algorithm: ThreadAlgorithm) -> String {
    let roots = match algorithm {
        ThreadAlgorithm::OrderedSubject => ordered_subject(items),
        ThreadAlgorithm::References => references(items),
    };
    let mut out = String::new();
    render(&roots, &mut out);
    out
}

fn leaf(d: &SortData) -> Node {
    Node {
        id: Some(d.id),
        date: d.date,
        seq: d.seq,
        children: Vec::new(),
    }
}

fn ordered_subject(mut items: Vec<SortData>) -> Vec<Node> {
    items.sort_by(|a, b| {
        a.base_subject
            .cmp(&b.base_subject)
            .then(a.date.cmp(&b.date))
            .then(a.seq.cmp(&b.seq))
    });
    let mut roots: Vec<Node> = Vec::new();
    let mut last_subject: Option<String> = None;
    for d in &items {
        if last_subject.as_deref() == Some(d.base_subject.as_str()) {
            if let Some(root) = roots.last_mut() {
                root.children.push(leaf(d));
                continue;
            }
        }
        last_subject = Some(d.base_subject.clone());
        roots.push(leaf(d));
    }
    roots.sort_by_key(|n| (n.date, n.seq));
    roots
}

/// REFERENCES (RFC 5256 §3, after Zawinski): parent/child links from References and
/// In-Reply-To, dummies pruned, roots grouped by base subject, siblings by date.
fn references(items: Vec<SortData>) -> Vec<Node> {
    #[derive(Default, Clone)]
    struct C {
        msg: Option<usize>,
        parent: Option<usize>,
        children: Vec<usize>,
    }
    let mut containers: Vec<C> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut get = |id: &str, containers: &mut Vec<C>| -> usize {
        *by_id.entry(id.to_string()).or_insert_with(|| {
            containers.push(C::default());
            containers.len() - 1
        })
    };
    fn is_ancestor(containers: &[C], a: usize, mut b: usize) -> bool {
        let mut steps = 0;
        loop {
            if a == b {
                return true;
            }
            match containers[b].parent {
                Some(p) if steps < 10_000 => {
                    b = p;
                    steps += 1;
                }
                _ => return false,
            }
        }
    }
    for (i, d) in items.iter().enumerate() {
        let own = match &d.message_id {
            Some(mid) => {
                let c = get(mid, &mut containers);
                if containers[c].msg.is_some() {
                    // Duplicate Message-ID: treat as a message without one.
                    containers.push(C::default());
                    containers.len() - 1
                } else {
                    c
                }
            }
            None => {
                containers.push(C::default());
                containers.len() - 1
            }
        };
        containers[own].msg = Some(i);
        let refs: Vec<usize> = d
            .references
            .iter()
            .map(|r| get(r, &mut containers))
            .collect();
        for w in refs.windows(2) {
            let (p, c) = (w[0], w[1]);
            if containers[c].parent.is_none() && !is_ancestor(&containers, c, p) {
                containers[c].parent = Some(p);
                containers[p].children.push(c);
            }
        }
        if let Some(&last) = refs.last() {
            if let Some(old) = containers[own].parent.take() {
                containers[old].children.retain(|x| *x != own);
            }
            if !is_ancestor(&containers, own, last) {
                containers[own].parent = Some(last);
                containers[last].children.push(own);
            }
        }
    }
    fn build(containers: &[C], items: &[SortData], c: usize, depth: usize) -> Vec<Node> {
        let children: Vec<Node> = if depth > 500 {
            Vec::new()
        } else {
            containers[c]
                .children
                .iter()
                .flat_map(|&x| build(containers, items, x, depth + 1))
                .collect()
        };
        match containers[c].msg {
            Some(i) => vec![Node {
                id: Some(items[i].id),
                date: items[i].date,
                seq: items[i].seq,
                children,
            }],
            // A dummy: keep it only to hold several children at the top; else promote them.
            None => {
                if children.len() > 1 && depth == 0 {
                    vec![Node {
                        id: None,
                        date: 0,
                        seq: 0,
                        children,
                    }]
                } else {
                    children
                }
            }
        }
    }
    let mut roots: Vec<Node> = (0..containers.len())
        .filter(|c| containers[*c].parent.is_none())
        .flat_map(|c| build(&containers, &items, c, 0))
        .collect();
    // Group roots by base subject (RFC 5256 §3 step 5).
    let subject_of = |n: &Node| -> Option<(String, bool)> {
        let id = n.id.or_else(|| n.children.first().and_then(|c| c.id))?;
        items
            .iter()
            .find(|d| d.id == id)
            .map(|d| (d.base_subject.clone(), d.is_reply))
    };
    let mut grouped: Vec<Node> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in roots.drain(..) {
        let Some((subject, reply)) = subject_of(&r).filter(|(s, _)| !s.is_empty()) else {
            grouped.push(r);
            continue;
        };
        match index.get(&subject) {
            Some(&g) => {
                let target = &mut grouped[g];
                if target.id.is_none() || reply {
                    target.children.push(r);
                } else {
                    let old = std::mem::replace(
                        target,
                        Node {
                            id: None,
                            date: 0,
                            seq: 0,
                            children: Vec::new(),
                        },
                    );
                    target.children = vec![old, r];
                }
            }
            None => {
                index.insert(subject, grouped.len());
                grouped.push(r);
            }
        }
    }
    sort_tree(&mut grouped);
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects_per_rfc5256() {
        assert_eq!(base_subject("Re: Re: hello").0, "hello");
        assert_eq!(
            base_subject("Fwd: [list] Re: Hello World (fwd)").0,
            "hello world"
        );
        assert_eq!(base_subject("[fwd: Meeting]").0, "meeting");
        assert_eq!(base_subject("  Plain   subject ").0, "plain subject");
        assert!(base_subject("RE: x").1);
        assert!(!base_subject("x").1);
        assert_eq!(base_subject("[PATCH]").0, "[patch]");
    }

    fn d(id: u32, date: i64, subject: &str, mid: &str, refs: &[&str]) -> SortData {
        let (base_subject, is_reply) = base_subject(subject);
        SortData {
            id,
            seq: id,
            date,
            internal_date: date,
            base_subject,
            is_reply,
            message_id: Some(mid.to_string()),
            references: refs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ordered_subject_threads() {
        let items = vec![
            d(1, 10, "a", "<1>", &[]),
            d(2, 20, "Re: a", "<2>", &[]),
            d(3, 15, "b", "<3>", &[]),
            d(4, 30, "Re: a", "<4>", &[]),
        ];
        assert_eq!(
            thread(items, ThreadAlgorithm::OrderedSubject),
            "(1 (2)(4))(3)"
        );
    }

    #[test]
    fn references_threads() {
        let items = vec![
            d(1, 10, "a", "<1>", &[]),
            d(2, 20, "Re: a", "<2>", &["<1>"]),
            d(3, 30, "Re: a", "<3>", &["<1>", "<2>"]),
            d(4, 25, "other", "<4>", &[]),
            d(5, 40, "Re: a", "<5>", &["<1>"]),
        ];
        assert_eq!(
            thread(items, ThreadAlgorithm::References),
            "(1 (2 3)(5))(4)"
        );
    }

    #[test]
    fn sort_by_criteria() {
        let mut a = d(1, 30, "b", "<1>", &[]);
        a.size = 10;
        let mut b = d(2, 10, "a", "<2>", &[]);
        b.size = 30;
        let mut c = d(3, 20, "c", "<3>", &[]);
        c.size = 20;
        let items = vec![a, b, c];
        let k = |key, reverse| SortCriterion { key, reverse };
        assert_eq!(
            sort(items.clone(), &[k(SortKey::Date, false)]),
            vec![2, 3, 1]
        );
        assert_eq!(
            sort(items.clone(), &[k(SortKey::Size, true)]),
            vec![2, 3, 1]
        );
        assert_eq!(sort(items, &[k(SortKey::Subject, false)]), vec![2, 1, 3]);
    }
}
