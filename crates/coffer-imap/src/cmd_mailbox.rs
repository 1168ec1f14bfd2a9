//! Mailbox commands: SELECT/EXAMINE (with CONDSTORE and QRESYNC), CREATE, DELETE, RENAME,
//! SUBSCRIBE, UNSUBSCRIBE, LIST (LIST-EXTENDED, LIST-STATUS, SPECIAL-USE), LSUB, STATUS,
//! APPEND (MULTIAPPEND, APPENDUID), GETQUOTA/GETQUOTAROOT. RFC 9051 §6.3.

use crate::response;
use crate::session::{flags_text, mail_err, uid_set_text, Done, Out, Selected, Session};
use crate::types::{AppendMessage, ListOptions, QresyncParams, StatusItem};
use coffer_mail::{InternalDate, MailError, Mailbox};
use coffer_types::{Flag, SpecialUse};

/// `*` matches anything, `%` anything but the hierarchy delimiter (RFC 9051 §6.3.9).
pub(crate) fn wildcard_match(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|i| wildcard_match(rest, &name[i..])),
        Some(('%', rest)) => {
            let limit = name.iter().position(|c| *c == '/').unwrap_or(name.len());
            (0..=limit).any(|i| wildcard_match(rest, &name[i..]))
        }
        Some((c, rest)) => name.first() == Some(c) && wildcard_match(rest, &name[1..]),
    }
}

fn canonical_pattern(p: &str) -> String {
    // INBOX is case-insensitive (RFC 9051 §5.1).
    if p.len() >= 5
        && p[..5].eq_ignore_ascii_case("INBOX")
        && (p.len() == 5 || p.as_bytes()[5] == b'/')
    {
        format!("INBOX{}", &p[5..])
    } else {
        p.to_string()
    }
}

fn special_use_from(attr: &str) -> Option<SpecialUse> {
    match attr.to_ascii_lowercase().as_str() {
        "\\all" => Some(SpecialUse::All),
        "\\archive" => Some(SpecialUse::Archive),
        "\\drafts" => Some(SpecialUse::Drafts),
        "\\flagged" => Some(SpecialUse::Flagged),
        "\\junk" => Some(SpecialUse::Junk),
        "\\sent" => Some(SpecialUse::Sent),
        "\\trash" => Some(SpecialUse::Trash),
        _ => None,
    }
}

impl Session {
    fn decode_pattern(&self, raw: &[u8]) -> Result<String, Done> {
        if self.utf8 {
            String::from_utf8(raw.to_vec()).map_err(|_| Done::bad("Pattern is not valid UTF-8"))
        } else {
            crate::mutf7::decode(raw)
                .or_else(|| {
                    std::str::from_utf8(raw)
                        .ok()
                        .filter(|_| !raw.contains(&b'&'))
                        .map(str::to_string)
                })
                .ok_or_else(|| Done::bad("Pattern is not valid modified UTF-7"))
        }
    }

    pub(crate) async fn select(
        &mut self,
        raw: &[u8],
        read_only: bool,
        condstore: bool,
        qresync: Option<QresyncParams>,
        out: &mut Out<'_>,
    ) -> Done {
        if self.selected.take().is_some() {
            out.line("* OK [CLOSED] Previous mailbox closed");
        }
        if condstore {
            self.condstore = true;
        }
        if qresync.is_some() && !self.qresync {
            return Done::bad("QRESYNC must be enabled first");
        }
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let mb = match self.ctx.mail.find_mailbox(session, &name).await {
            Ok(Some(m)) => m,
            Ok(None) => return Done::no("[NONEXISTENT] No such mailbox"),
            Err(e) => return mail_err(e),
        };
        // The cached view itself, shared until this session changes it (`Selected::view`),
        // and its cached summary (keywords, first unseen).
        let (view, summary) = match self
            .ctx
            .mail
            .select_view(session, mb.id, mb.uid_next, mb.highest_modseq)
            .await
        {
            Ok(v) => v,
            Err(e) => return mail_err(e),
        };
        let mut flags = String::from("\\Answered \\Flagged \\Deleted \\Seen \\Draft");
        for k in &summary.keywords {
            flags.push(' ');
            flags.push_str(k);
        }
        out.line(&format!("* {} EXISTS", view.len()));
        if !self.rev2 {
            out.line("* 0 RECENT");
            if let Some(i) = summary.first_unseen {
                out.line(&format!("* OK [UNSEEN {}] First unseen", i + 1));
            }
        }
        out.line(&format!("* FLAGS ({flags})"));
        if read_only {
            out.line("* OK [PERMANENTFLAGS ()] Read-only mailbox");
        } else {
            out.line(&format!(
                "* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted"
            ));
        }
        out.line(&format!(
            "* OK [UIDVALIDITY {}] UIDs valid",
            mb.uid_validity.get()
        ));
        out.line(&format!(
            "* OK [UIDNEXT {}] Predicted next UID",
            mb.uid_next
        ));
        out.line(&format!(
            "* OK [HIGHESTMODSEQ {}] Highest",
            mb.highest_modseq
        ));
        if self.rev2 {
            let mut l = b"* LIST () \"/\" ".to_vec();
            response::mailbox(&mut l, mb.name.as_str(), self.utf8);
            out.bytes(&l);
            out.line("");
        }
        let mut sel = Selected {
            highest_modseq: mb.highest_modseq,
            uid_next: mb.uid_next,
            mailbox: mb,
            read_only,
            view,
            pending_expunge: Vec::new(),
        };
        if let Some(q) = qresync {
            if let Err(d) = self.qresync_select(&mut sel, &q, out).await {
                return d;
            }
        }
        let text = if read_only {
            "OK [READ-ONLY] EXAMINE completed"
        } else {
            "OK [READ-WRITE] SELECT completed"
        };
        self.selected = Some(sel);
        Done::Tagged(text.into())
    }

    /// QRESYNC (RFC 7162 §3.2.5): what changed since the client's MODSEQ.
    async fn qresync_select(
        &self,
        sel: &mut Selected,
        q: &QresyncParams,
        out: &mut Out<'_>,
    ) -> Result<(), Done> {
        if q.uid_validity != sel.mailbox.uid_validity.get() {
            return Ok(());
        }
        let session = self.session()?;
        let store = self.ctx.mail.vault().store();
        let expunged = store
            .expunged_since(session.user_id(), sel.mailbox.id, q.modseq)
            .await
            .map_err(|e| mail_err(MailError::Store(e)))?;
        let max = sel.uid_next.saturating_sub(1);
        let vanished: Vec<u32> = expunged
            .iter()
            .map(|u| u.get())
            .filter(|u| q.known_uids.as_ref().is_none_or(|k| k.contains(*u, max)))
            .collect();
        if !vanished.is_empty() {
            out.line(&format!("* VANISHED (EARLIER) {}", uid_set_text(&vanished)));
        }
        for (i, m) in sel.view.iter().enumerate() {
            if m.modseq.get() > q.modseq {
                out.line(&format!(
                    "* {} FETCH (UID {} FLAGS {} MODSEQ ({}))",
                    i + 1,
                    m.uid,
                    flags_text(&m.flags),
                    m.modseq.get()
                ));
            }
        }
        Ok(())
    }

    pub(crate) async fn create(&mut self, raw: &[u8], special_use: &[String]) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let roles: Vec<Option<SpecialUse>> =
            special_use.iter().map(|a| special_use_from(a)).collect();
        if roles.iter().any(Option::is_none) || roles.len() > 1 {
            return Done::no("[USEATTR] Unsupported special-use attribute");
        }
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        if let Err(e) = self.ctx.mail.create_mailbox(session, &name).await {
            return mail_err(e);
        }
        if let Some(Some(role)) = roles.first() {
            if let Err(e) = self
                .ctx
                .mail
                .set_special_use(session, &name, Some(*role))
                .await
            {
                return mail_err(e);
            }
        }
        Done::ok("CREATE completed")
    }

    pub(crate) async fn delete(&mut self, raw: &[u8], out: &mut Out<'_>) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        if let Err(e) = self.ctx.mail.delete_mailbox(session, &name).await {
            return mail_err(e);
        }
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.name == name)
        {
            self.selected = None;
            out.line("* OK [CLOSED] Mailbox deleted");
        }
        Done::ok("DELETE completed")
    }

    pub(crate) async fn rename(&mut self, from: &[u8], to: &[u8]) -> Done {
        let (from, to) = match (self.mailbox_name(from), self.mailbox_name(to)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(d), _) | (_, Err(d)) => return d,
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        match self.ctx.mail.rename_mailbox(session, &from, &to).await {
            Ok(_) => Done::ok("RENAME completed"),
            Err(e) => mail_err(e),
        }
    }

    pub(crate) async fn subscribe(&mut self, raw: &[u8], on: bool) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        match self.ctx.mail.set_subscribed(session, &name, on).await {
            Ok(()) => Done::ok(if on {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            }),
            // Unsubscribing a mailbox that is gone is not an error (RFC 9051 §6.3.8).
            Err(MailError::NoSuchMailbox) if !on => Done::ok("UNSUBSCRIBE completed"),
            Err(e) => mail_err(e),
        }
    }

    fn list_line(
        &self,
        kind: &str,
        mb: &Mailbox,
        all: &[Mailbox],
        subscribed_attr: bool,
        out: &mut Out<'_>,
    ) {
        let children = all.iter().any(|m| m.name.is_under(&mb.name));
        let mut attrs = vec![if children {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        }];
        if subscribed_attr && mb.subscribed {
            attrs.push("\\Subscribed");
        }
        if let Some(su) = mb.special_use {
            attrs.push(su.attribute());
        }
        let mut line = format!("* {kind} ({}) \"/\" ", attrs.join(" ")).into_bytes();
        response::mailbox(&mut line, mb.name.as_str(), self.utf8);
        out.bytes(&line);
        out.line("");
    }

    pub(crate) async fn list(
        &mut self,
        reference: &[u8],
        patterns: &[Vec<u8>],
        options: &ListOptions,
        out: &mut Out<'_>,
    ) -> Done {
        let reference = match self.decode_pattern(reference) {
            Ok(r) => r,
            Err(d) => return d,
        };
        if patterns.len() == 1 && patterns[0].is_empty() {
            out.line("* LIST (\\Noselect) \"/\" \"\"");
            return Done::ok("LIST completed");
        }
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let all = match self.ctx.mail.list_mailboxes(session).await {
            Ok(a) => a,
            Err(e) => return mail_err(e),
        };
        let mut compiled = Vec::new();
        for p in patterns {
            let p = match self.decode_pattern(p) {
                Ok(p) => p,
                Err(d) => return d,
            };
            compiled.push(
                canonical_pattern(&format!("{reference}{p}"))
                    .chars()
                    .collect::<Vec<char>>(),
            );
        }
        let show_subscribed = options.return_subscribed || options.subscribed;
        for mb in &all {
            let name: Vec<char> = mb.name.as_str().chars().collect();
            if !compiled.iter().any(|p| wildcard_match(p, &name)) {
                continue;
            }
            if options.subscribed && !mb.subscribed {
                continue;
            }
            if options.special_use && mb.special_use.is_none() {
                continue;
            }
            self.list_line("LIST", mb, &all, show_subscribed, out);
            if let Some(items) = &options.return_status {
                if let Err(d) = self.status_line(mb, items, out).await {
                    return d;
                }
            }
        }
        Done::ok("LIST completed")
    }

    pub(crate) async fn lsub(
        &mut self,
        reference: &[u8],
        pattern: &[u8],
        out: &mut Out<'_>,
    ) -> Done {
        let (reference, pattern) =
            match (self.decode_pattern(reference), self.decode_pattern(pattern)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(d), _) | (_, Err(d)) => return d,
            };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let all = match self.ctx.mail.list_mailboxes(session).await {
            Ok(a) => a,
            Err(e) => return mail_err(e),
        };
        let p: Vec<char> = canonical_pattern(&format!("{reference}{pattern}"))
            .chars()
            .collect();
        for mb in all.iter().filter(|m| m.subscribed) {
            let name: Vec<char> = mb.name.as_str().chars().collect();
            if wildcard_match(&p, &name) {
                let mut line = b"* LSUB () \"/\" ".to_vec();
                response::mailbox(&mut line, mb.name.as_str(), self.utf8);
                out.bytes(&line);
                out.line("");
            }
        }
        Done::ok("LSUB completed")
    }

    async fn status_line(
        &self,
        mb: &Mailbox,
        items: &[StatusItem],
        out: &mut Out<'_>,
    ) -> Result<(), Done> {
        let session = self.session()?;
        let mail = &self.ctx.mail;
        let needs_flags = items.iter().any(|i| {
            matches!(
                i,
                StatusItem::Messages | StatusItem::Unseen | StatusItem::Deleted
            )
        });
        let needs_size = items.contains(&StatusItem::Size);
        let flags = if needs_flags {
            Some(
                mail.flags_view_at(session, mb.id, mb.uid_next, mb.highest_modseq)
                    .await
                    .map_err(mail_err)?,
            )
        } else {
            None
        };
        let size: u64 = if needs_size {
            mail.messages_with(session, mb.id, coffer_mail::Columns::MetaOnly)
                .await
                .map_err(mail_err)?
                .iter()
                .map(|m| m.size)
                .sum()
        } else {
            0
        };
        let mut parts = Vec::new();
        for item in items {
            parts.push(match item {
                StatusItem::Messages => {
                    format!("MESSAGES {}", flags.as_ref().map_or(0, |f| f.len()))
                }
                StatusItem::Recent => "RECENT 0".into(),
                StatusItem::UidNext => format!("UIDNEXT {}", mb.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uid_validity.get()),
                StatusItem::Unseen => format!(
                    "UNSEEN {}",
                    flags.as_ref().map_or(0, |f| f
                        .iter()
                        .filter(|e| !e.flags.contains(&Flag::Seen))
                        .count())
                ),
                StatusItem::Deleted => format!(
                    "DELETED {}",
                    flags.as_ref().map_or(0, |f| f
                        .iter()
                        .filter(|e| e.flags.contains(&Flag::Deleted))
                        .count())
                ),
                StatusItem::Size => format!("SIZE {size}"),
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", mb.highest_modseq),
                StatusItem::AppendLimit => {
                    format!("APPENDLIMIT {}", self.ctx.config.max_message_bytes)
                }
            });
        }
        let mut line = b"* STATUS ".to_vec();
        response::mailbox(&mut line, mb.name.as_str(), self.utf8);
        line.extend_from_slice(format!(" ({})", parts.join(" ")).as_bytes());
        out.bytes(&line);
        out.line("");
        Ok(())
    }

    pub(crate) async fn status(
        &mut self,
        raw: &[u8],
        items: &[StatusItem],
        out: &mut Out<'_>,
    ) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let mb = match self.ctx.mail.find_mailbox(session, &name).await {
            Ok(Some(m)) => m,
            Ok(None) => return Done::no("[NONEXISTENT] No such mailbox"),
            Err(e) => return mail_err(e),
        };
        match self.status_line(&mb, items, out).await {
            Ok(()) => Done::ok("STATUS completed"),
            Err(d) => d,
        }
    }

    async fn quota_used(&self) -> Result<u64, Done> {
        let session = self.session()?;
        Ok(self.ctx.mail.usage(session).await.map_err(mail_err)?.0)
    }

    pub(crate) async fn append(&mut self, raw: &[u8], messages: Vec<AppendMessage>) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let mut parsed = Vec::with_capacity(messages.len());
        for m in &messages {
            let mut flags = Vec::new();
            for f in &m.flags {
                if f.eq_ignore_ascii_case("\\Recent") {
                    continue;
                }
                match Flag::parse(f) {
                    Some(flag) => flags.push(flag),
                    None => return Done::bad("Invalid flag in APPEND"),
                }
            }
            if m.data.is_empty() {
                return Done::no("[CANNOT] Empty message");
            }
            if m.data.len() as u64 > self.ctx.config.max_message_bytes {
                return Done::no(&format!(
                    "[TOOBIG] Message is larger than {} bytes",
                    self.ctx.config.max_message_bytes
                ));
            }
            parsed.push(flags);
        }
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let mb = match self.ctx.mail.find_mailbox(session, &name).await {
            Ok(Some(m)) => m,
            Ok(None) => return Done::no("[TRYCREATE] No such mailbox"),
            Err(e) => return mail_err(e),
        };
        if self.ctx.config.quota_bytes > 0 {
            let used = match self.quota_used().await {
                Ok(u) => u,
                Err(d) => return d,
            };
            let adding: u64 = messages.iter().map(|m| m.data.len() as u64).sum();
            if used + adding > self.ctx.config.quota_bytes {
                return Done::no("[OVERQUOTA] Quota exceeded");
            }
        }
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let mut uids = Vec::new();
        for (m, flags) in messages.into_iter().zip(&parsed) {
            let date = m
                .date
                .map(|(ts, off)| InternalDate {
                    timestamp: ts,
                    tz_offset_minutes: off,
                })
                .unwrap_or_else(InternalDate::now);
            match self
                .ctx
                .mail
                .append_owned(session, mb.id, m.data, flags, date)
                .await
            {
                Ok((uid, _)) => uids.push(uid),
                Err(e) => {
                    // MULTIAPPEND is all or nothing (RFC 3502 §6.3.11).
                    if !uids.is_empty() {
                        let _ = self.ctx.mail.expunge(session, mb.id, uids).await;
                    }
                    return mail_err(e);
                }
            }
        }
        let set = uid_set_text(&uids.iter().map(|u| u.get()).collect::<Vec<_>>());
        Done::Tagged(format!(
            "OK [APPENDUID {} {set}] APPEND completed",
            mb.uid_validity.get()
        ))
    }

    fn quota_line(&self, used: u64, out: &mut Out<'_>) {
        if self.ctx.config.quota_bytes > 0 {
            out.line(&format!(
                "* QUOTA \"\" (STORAGE {} {})",
                used.div_ceil(1024),
                self.ctx.config.quota_bytes / 1024
            ));
        }
    }

    pub(crate) async fn get_quota(&mut self, root: &[u8], out: &mut Out<'_>) -> Done {
        if !root.is_empty() {
            return Done::no("[NONEXISTENT] No such quota root");
        }
        let used = match self.quota_used().await {
            Ok(u) => u,
            Err(d) => return d,
        };
        self.quota_line(used, out);
        Done::ok("GETQUOTA completed")
    }

    pub(crate) async fn get_quota_root(&mut self, raw: &[u8], out: &mut Out<'_>) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        match self.ctx.mail.find_mailbox(session, &name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Done::no("[NONEXISTENT] No such mailbox"),
            Err(e) => return mail_err(e),
        }
        let mut line = b"* QUOTAROOT ".to_vec();
        response::mailbox(&mut line, name.as_str(), self.utf8);
        line.extend_from_slice(b" \"\"");
        out.bytes(&line);
        out.line("");
        let used = match self.quota_used().await {
            Ok(u) => u,
            Err(d) => return d,
        };
        self.quota_line(used, out);
        Done::ok("GETQUOTAROOT completed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        wildcard_match(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn wildcards() {
        assert!(m("*", "a/b/c"));
        assert!(m("%", "abc"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a*c", "a/b/c"));
        assert!(m("INBOX", "INBOX"));
        assert_eq!(canonical_pattern("inbox/%"), "INBOX/%");
        assert_eq!(canonical_pattern("inboxes"), "inboxes");
    }
}
