//! Message commands of the selected state: FETCH (RFC 9051 §6.4.5, BINARY, CONDSTORE,
//! QRESYNC VANISHED), STORE (UNCHANGEDSINCE), SEARCH (ESEARCH), COPY and MOVE (UIDPLUS
//! COPYUID), EXPUNGE, UID EXPUNGE, CLOSE and UNSELECT.

use crate::mime;
use crate::response;
use crate::search::{self, Candidate};
use crate::session::{flags_text, mail_err, uid_set_text, Done, Out, Session};
use crate::types::{
    FetchAtt, SearchKey, SearchReturn, Section, SectionText, SequenceSet, StoreMode,
};
use coffer_mail::{Columns, FlagOp, MailError, Message, Summary};
use coffer_types::{Flag, Uid};
use coffer_vault::Unlocked;
use std::collections::HashMap;

/// (sequence number, UID) of the messages a set names, in mailbox order. Visits only the
/// named messages: the view is in UID order, so UID ranges are found by binary search.
fn resolve(sel: &crate::session::Selected, uid: bool, set: &SequenceSet) -> Vec<(u32, u32)> {
    let view = &sel.view;
    let mut out = Vec::new();
    if uid {
        for (lo, hi) in set.ranges(sel.max_uid()) {
            let start = view.partition_point(|m| m.uid.get() < lo);
            for (i, m) in view.iter().enumerate().skip(start) {
                if m.uid.get() > hi {
                    break;
                }
                out.push((i as u32 + 1, m.uid.get()));
            }
        }
    } else {
        let n = view.len() as u32;
        for (lo, hi) in set.ranges(n) {
            for seq in lo.max(1)..=hi.min(n) {
                out.push((seq, view[seq as usize - 1].uid.get()));
            }
        }
    }
    out
}

/// Messages at least this large stream `BODY[]` from the blob when they can (see
/// `Session::stream_body`); smaller ones are cheaper to open whole.
const STREAM_MIN: u64 = 256 * 1024;

/// Whether a FETCH item needs the message body.
fn item_needs_body(item: &FetchAtt) -> bool {
    matches!(
        item,
        FetchAtt::BodySection { .. }
            | FetchAtt::Binary { .. }
            | FetchAtt::BinarySize(_)
            | FetchAtt::Rfc822
            | FetchAtt::Rfc822Header
            | FetchAtt::Rfc822Text
    )
}

/// `BODY[]`, `BODY.PEEK[]` or `RFC822` without a partial range: the whole message as stored
/// (when it is canonical), which can stream.
fn is_whole_message(item: &FetchAtt) -> bool {
    match item {
        FetchAtt::BodySection {
            section,
            partial: None,
            ..
        } => section.part.is_empty() && section.text.is_none(),
        FetchAtt::Rfc822 => true,
        _ => false,
    }
}

fn section_name(section: &Section) -> String {
    let mut s: String = section
        .part
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".");
    let text = match &section.text {
        None => None,
        Some(SectionText::Header) => Some("HEADER".to_string()),
        Some(SectionText::Text) => Some("TEXT".to_string()),
        Some(SectionText::Mime) => Some("MIME".to_string()),
        Some(SectionText::HeaderFields(f)) => Some(format!("HEADER.FIELDS ({})", f.join(" "))),
        Some(SectionText::HeaderFieldsNot(f)) => {
            Some(format!("HEADER.FIELDS.NOT ({})", f.join(" ")))
        }
    };
    if let Some(t) = text {
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(&t);
    }
    s
}

fn partial_slice(data: &[u8], partial: Option<(u32, u32)>) -> &[u8] {
    match partial {
        None => data,
        Some((off, len)) => {
            let start = (off as usize).min(data.len());
            let end = start.saturating_add(len as usize).min(data.len());
            &data[start..end]
        }
    }
}

impl Session {
    /// Loads sealed metadata for the given UIDs: the rows asked for (in batches) for a few, the whole
    /// mailbox for many. Flags stay sealed: FETCH answers them from the view.
    async fn load_meta(&self, uids: &[u32]) -> Result<HashMap<u32, Message>, Done> {
        let session = self.session()?;
        let Some(sel) = &self.selected else {
            return Err(Done::bad("No mailbox selected"));
        };
        let mut out = HashMap::new();
        // Most of the mailbox: one pass over it. A part: just those rows, in batches.
        let list = if uids.len() * 4 > sel.view.len() {
            let wanted: std::collections::HashSet<u32> = uids.iter().copied().collect();
            let all = self
                .ctx
                .mail
                .messages_with(session, sel.mailbox.id, Columns::MetaOnly)
                .await
                .map_err(mail_err)?;
            all.into_iter()
                .filter(|m| wanted.contains(&m.uid.get()))
                .collect()
        } else {
            let wanted: Vec<Uid> = uids.iter().filter_map(|u| Uid::new(*u)).collect();
            self.ctx
                .mail
                .messages_for(session, sel.mailbox.id, &wanted, Columns::MetaOnly)
                .await
                .map_err(mail_err)?
        };
        for m in list {
            out.insert(m.uid.get(), m);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fetch(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        items: &[FetchAtt],
        changed_since: Option<u64>,
        vanished: bool,
        out: &mut Out<'_>,
    ) -> Done {
        let Some(sel) = &self.selected else {
            return Done::bad("No mailbox selected");
        };
        if changed_since.is_some() {
            self.condstore = true;
        }
        let mut targets = resolve(sel, uid, set);
        if let Some(cs) = changed_since {
            let modseqs: HashMap<u32, u64> = sel
                .view
                .iter()
                .map(|m| (m.uid.get(), m.modseq.get()))
                .collect();
            targets.retain(|(_, u)| modseqs.get(u).is_some_and(|m| *m > cs));
            if vanished {
                let session = match self.session() {
                    Ok(s) => s,
                    Err(d) => return d,
                };
                let gone = match self
                    .ctx
                    .mail
                    .vault()
                    .store()
                    .expunged_since(session.user_id(), sel.mailbox.id, cs)
                    .await
                {
                    Ok(g) => g,
                    Err(e) => return mail_err(MailError::Store(e)),
                };
                let largest = sel.uid_next.saturating_sub(1);
                let gone: Vec<u32> = gone
                    .iter()
                    .map(|u| u.get())
                    .filter(|u| set.contains(*u, largest))
                    .collect();
                if !gone.is_empty() {
                    out.line(&format!("* VANISHED (EARLIER) {}", uid_set_text(&gone)));
                }
            }
        }
        // ENVELOPE, BODYSTRUCTURE and BODY come from the sealed summary (metadata), the
        // other body items from the body itself.
        let summary_items = items.iter().any(|i| {
            matches!(
                i,
                FetchAtt::Envelope | FetchAtt::BodyStructure | FetchAtt::Body
            )
        });
        let needs_body = items.iter().any(item_needs_body);
        // Body items other than the whole message: these need the body in memory.
        let needs_parsed_body = items
            .iter()
            .any(|i| item_needs_body(i) && !is_whole_message(i));
        let needs_meta = needs_body
            || summary_items
            || items
                .iter()
                .any(|i| matches!(i, FetchAtt::InternalDate | FetchAtt::Rfc822Size));
        let sets_seen = items.iter().any(|i| {
            matches!(
                i,
                FetchAtt::BodySection { peek: false, .. }
                    | FetchAtt::Binary { peek: false, .. }
                    | FetchAtt::Rfc822
                    | FetchAtt::Rfc822Text
            )
        });
        let read_only = sel.read_only;
        // Implicit \Seen (RFC 9051 §6.4.5) before answering, so FLAGS show it.
        let mut seen_set = Vec::new();
        if sets_seen && !read_only {
            let unseen: Vec<Uid> = targets
                .iter()
                .filter(|(s, _)| !sel.view[*s as usize - 1].flags.contains(&Flag::Seen))
                .filter_map(|(_, u)| Uid::new(*u))
                .collect();
            if !unseen.is_empty() {
                let Ok(session) = self.session() else {
                    return Done::bad("Log in first");
                };
                let mailbox = sel.mailbox.id;
                if let Err(e) = self
                    .ctx
                    .mail
                    .store_flags(session, mailbox, &unseen, FlagOp::Add, &[Flag::Seen], None)
                    .await
                {
                    return mail_err(e);
                }
                seen_set = unseen.iter().map(|u| u.get()).collect();
                if let Err(d) = self.refresh_view_entries(&seen_set).await {
                    return d;
                }
            }
        }
        let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        let meta = if needs_meta {
            match self.load_meta(&uids).await {
                Ok(m) => m,
                Err(d) => return d,
            }
        } else {
            HashMap::new()
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let Some(sel) = &self.selected else {
            return Done::bad("No mailbox selected");
        };
        let mut unknown_cte = false;
        // Summaries computed here for rows stored before summaries existed, kept afterwards.
        let mut learned: Vec<(Message, Summary)> = Vec::new();
        for (seq, u) in targets {
            let Some(vm) = sel.view.get(seq as usize - 1) else {
                continue;
            };
            let m = meta.get(&u);
            if needs_meta && m.is_none() {
                // Expunged by another session meanwhile: nothing to send (RFC 9051 §7.5.1
                // lets the server omit it; the EXPUNGE follows later).
                continue;
            }
            let cached = m.and_then(|m| m.summary.clone());
            let summary_complete = cached.as_deref().is_some_and(|c| {
                items.iter().all(|i| match i {
                    FetchAtt::Envelope => !c.envelope.is_empty(),
                    FetchAtt::BodyStructure => !c.body_structure.is_empty(),
                    FetchAtt::Body => !c.body.is_empty(),
                    _ => true,
                })
            });
            // A large message that is sent exactly as stored streams from the blob; the
            // size is known from the metadata before the body is opened.
            let stream = needs_body
                && !needs_parsed_body
                && (summary_complete || !summary_items)
                && m.is_some_and(|m| m.size >= STREAM_MIN)
                && cached.as_deref().is_some_and(|c| c.canonical);
            let load_body = (needs_body && !stream) || (summary_items && !summary_complete);
            let raw = if load_body {
                match self.ctx.mail.body(session, m.expect("checked above")).await {
                    Ok(b) => Some(b),
                    Err(e) => return mail_err(e),
                }
            } else {
                None
            };
            let summary: Option<std::sync::Arc<Summary>> = match (&raw, summary_items) {
                (Some(body), true) if !summary_complete => {
                    let fresh = mime::summary(body);
                    if cached.is_none() {
                        learned.push((m.expect("checked above").clone(), fresh.clone()));
                    }
                    Some(std::sync::Arc::new(fresh))
                }
                _ => cached,
            };
            let raw_bytes: &[u8] = raw.as_deref().map(|v| v.as_slice()).unwrap_or(b"");
            // Items are written straight into the response line: a large literal is copied
            // once, not once per layer.
            let mut line = format!("* {seq} FETCH (").into_bytes();
            let has_uid = items.contains(&FetchAtt::Uid);
            let mut has_flags = false;
            let mut has_modseq = false;
            let mut first = true;
            if uid && !has_uid {
                line.extend_from_slice(format!("UID {u}").as_bytes());
                first = false;
            }
            for item in items {
                if !first {
                    line.push(b' ');
                }
                first = false;
                let p = &mut line;
                match item {
                    FetchAtt::Uid => {
                        p.extend_from_slice(format!("UID {u}").as_bytes());
                    }
                    FetchAtt::Flags => {
                        has_flags = true;
                        p.extend_from_slice(format!("FLAGS {}", flags_text(&vm.flags)).as_bytes());
                    }
                    FetchAtt::InternalDate => {
                        let m = m.expect("meta loaded");
                        p.extend_from_slice(
                            format!(
                                "INTERNALDATE {}",
                                response::date_time(m.internal_date, m.tz_offset_minutes)
                            )
                            .as_bytes(),
                        );
                    }
                    FetchAtt::Rfc822Size => {
                        p.extend_from_slice(
                            format!("RFC822.SIZE {}", m.expect("meta loaded").size).as_bytes(),
                        );
                    }
                    FetchAtt::ModSeq => {
                        has_modseq = true;
                        p.extend_from_slice(format!("MODSEQ ({})", vm.modseq.get()).as_bytes());
                    }
                    FetchAtt::Envelope => {
                        p.extend_from_slice(b"ENVELOPE ");
                        match summary.as_deref().filter(|s| !s.envelope.is_empty()) {
                            Some(s) => p.extend_from_slice(&s.envelope),
                            None => p.extend_from_slice(&mime::envelope(raw_bytes)),
                        }
                    }
                    FetchAtt::BodyStructure => {
                        p.extend_from_slice(b"BODYSTRUCTURE ");
                        match summary.as_deref().filter(|s| !s.body_structure.is_empty()) {
                            Some(s) => p.extend_from_slice(&s.body_structure),
                            None => p.extend_from_slice(&mime::body_structure(raw_bytes, true)),
                        }
                    }
                    FetchAtt::Body => {
                        p.extend_from_slice(b"BODY ");
                        match summary.as_deref().filter(|s| !s.body.is_empty()) {
                            Some(s) => p.extend_from_slice(&s.body),
                            None => p.extend_from_slice(&mime::body_structure(raw_bytes, false)),
                        }
                    }
                    FetchAtt::BodySection {
                        section, partial, ..
                    } => {
                        p.extend_from_slice(format!("BODY[{}]", section_name(section)).as_bytes());
                        if let Some((off, _)) = partial {
                            p.extend_from_slice(format!("<{off}>").as_bytes());
                        }
                        p.push(b' ');
                        if stream && is_whole_message(item) {
                            let m = m.expect("checked above");
                            if let Err(d) = self.stream_body(session, m, p, out).await {
                                return d;
                            }
                            continue;
                        }
                        // BODY[] needs no MIME parse: the fast path avoids copying a large
                        // message.
                        let whole = (section.part.is_empty() && section.text.is_none())
                            .then(|| mime::whole_message(raw_bytes));
                        if let Some(data) = whole {
                            response::literal(p, partial_slice(&data, *partial));
                        } else {
                            match mime::section(raw_bytes, section) {
                                Some(data) => response::literal(p, partial_slice(&data, *partial)),
                                // A part that does not exist is an empty string, as Dovecot answers.
                                None => p.extend_from_slice(b"{0}\r\n"),
                            }
                        }
                    }
                    FetchAtt::Binary { part, partial, .. } => {
                        let name = part
                            .iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(".");
                        p.extend_from_slice(format!("BINARY[{name}]").as_bytes());
                        if let Some((off, _)) = partial {
                            p.extend_from_slice(format!("<{off}>").as_bytes());
                        }
                        p.push(b' ');
                        match mime::binary(raw_bytes, part) {
                            Ok(data) => {
                                response::literal_or_literal8(p, partial_slice(&data, *partial))
                            }
                            Err(mime::BinaryError::UnknownCte) => {
                                unknown_cte = true;
                                p.extend_from_slice(b"NIL");
                            }
                            Err(_) => p.extend_from_slice(b"{0}\r\n"),
                        }
                    }
                    FetchAtt::BinarySize(part) => {
                        let name = part
                            .iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(".");
                        match mime::binary(raw_bytes, part) {
                            Ok(data) => p.extend_from_slice(
                                format!("BINARY.SIZE[{name}] {}", data.len()).as_bytes(),
                            ),
                            Err(mime::BinaryError::UnknownCte) => {
                                unknown_cte = true;
                                p.extend_from_slice(format!("BINARY.SIZE[{name}] NIL").as_bytes());
                            }
                            Err(_) => {
                                p.extend_from_slice(format!("BINARY.SIZE[{name}] NIL").as_bytes())
                            }
                        }
                    }
                    // The RFC822 forms are BODY[], BODY.PEEK[HEADER] and BODY[TEXT] under
                    // their old names (RFC 9051 §6.4.5), with the same CRLF/NUL handling.
                    FetchAtt::Rfc822 | FetchAtt::Rfc822Header | FetchAtt::Rfc822Text => {
                        let (name, text) = match item {
                            FetchAtt::Rfc822 => ("RFC822 ", None),
                            FetchAtt::Rfc822Header => ("RFC822.HEADER ", Some(SectionText::Header)),
                            _ => ("RFC822.TEXT ", Some(SectionText::Text)),
                        };
                        p.extend_from_slice(name.as_bytes());
                        if stream && text.is_none() {
                            let m = m.expect("checked above");
                            if let Err(d) = self.stream_body(session, m, p, out).await {
                                return d;
                            }
                        } else if text.is_none() {
                            response::literal(p, &mime::whole_message(raw_bytes));
                        } else {
                            let data = mime::section(
                                raw_bytes,
                                &Section {
                                    part: Vec::new(),
                                    text,
                                },
                            )
                            .unwrap_or_default();
                            response::literal(p, &data);
                        }
                    }
                }
            }
            if seen_set.contains(&u) && !has_flags {
                line.extend_from_slice(format!(" FLAGS {}", flags_text(&vm.flags)).as_bytes());
                has_flags = true;
            }
            if self.condstore && (has_flags || changed_since.is_some()) && !has_modseq {
                line.extend_from_slice(format!(" MODSEQ ({})", vm.modseq.get()).as_bytes());
            }
            line.extend_from_slice(b")\r\n");
            out.take(line);
            if out.maybe_flush().await.is_err() {
                return Done::Bye("Connection error".into());
            }
        }
        if !learned.is_empty() {
            // A cache: a failure to keep it costs the next FETCH a body open, nothing else.
            if let Err(e) = self.ctx.mail.remember_summaries(session, learned).await {
                tracing::debug!(error = %e, "could not keep FETCH summaries");
            }
        }
        if unknown_cte {
            return Done::no("[UNKNOWN-CTE] Unknown content-transfer-encoding");
        }
        Done::ok("FETCH completed")
    }

    /// Sends the literal of a whole message that streams from its blob: what `line` holds
    /// so far, the literal's size (known from the sealed metadata), then the decrypted
    /// chunks as they come. An error after the literal began cannot be answered with a
    /// tagged NO (the client counts octets), so the connection is closed instead.
    async fn stream_body(
        &self,
        session: &Unlocked,
        m: &Message,
        line: &mut Vec<u8>,
        out: &mut Out<'_>,
    ) -> Result<(), Done> {
        let mut chunks = self
            .ctx
            .mail
            .body_chunks(session, m)
            .await
            .map_err(mail_err)?;
        line.extend_from_slice(format!("{{{}}}\r\n", m.size).as_bytes());
        out.take(std::mem::take(line));
        out.flush().await.map_err(|_| Done::Abort)?;
        let mut sent = 0u64;
        while let Some(chunk) = chunks.recv().await {
            match chunk {
                Ok(c) => {
                    sent += c.len() as u64;
                    out.write_direct(&c).await.map_err(|_| Done::Abort)?;
                    chunks.give_back(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "message body failed while streaming; closing");
                    return Err(Done::Abort);
                }
            }
        }
        if sent != m.size {
            return Err(Done::Abort);
        }
        Ok(())
    }

    /// Re-reads flags and MODSEQs of some messages into the view (after this session's
    /// own changes, so they are not announced again as someone else's).
    async fn refresh_view_entries(&mut self, uids: &[u32]) -> Result<(), Done> {
        let session = self.session()?;
        let Some(sel) = &self.selected else {
            return Ok(());
        };
        // A few messages: read just those rows; many: the whole mailbox at once.
        let entries = if uids.len() <= 256 {
            let wanted: Vec<Uid> = uids.iter().filter_map(|u| Uid::new(*u)).collect();
            std::sync::Arc::new(
                self.ctx
                    .mail
                    .flags_for(session, sel.mailbox.id, &wanted)
                    .await
                    .map_err(mail_err)?,
            )
        } else {
            self.ctx
                .mail
                .flags_view(session, sel.mailbox.id)
                .await
                .map_err(mail_err)?
        };
        let wanted: std::collections::HashSet<u32> = uids.iter().copied().collect();
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        for e in entries.iter().filter(|e| wanted.contains(&e.uid.get())) {
            if let Some(i) = sel.seq_of(e.uid.get()) {
                let view = std::sync::Arc::make_mut(&mut sel.view);
                view[i - 1].flags = e.flags.clone();
                view[i - 1].modseq = e.modseq;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn store(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        unchanged_since: Option<u64>,
        mode: StoreMode,
        silent: bool,
        flags: &[String],
        out: &mut Out<'_>,
    ) -> Done {
        let Some(sel) = &self.selected else {
            return Done::bad("No mailbox selected");
        };
        if sel.read_only {
            return Done::no("[READ-ONLY] Mailbox is read-only");
        }
        let mut parsed = Vec::new();
        for f in flags {
            if f.eq_ignore_ascii_case("\\Recent") {
                continue;
            }
            match Flag::parse(f) {
                Some(flag) => parsed.push(flag),
                None => return Done::bad("Invalid flag"),
            }
        }
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let targets = resolve(sel, uid, set);
        let mailbox = sel.mailbox.id;
        let uids: Vec<Uid> = targets.iter().filter_map(|(_, u)| Uid::new(*u)).collect();
        let op = match mode {
            StoreMode::Replace => FlagOp::Replace,
            StoreMode::Add => FlagOp::Add,
            StoreMode::Remove => FlagOp::Remove,
        };
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let update = match self
            .ctx
            .mail
            .store_flags(session, mailbox, &uids, op, &parsed, unchanged_since)
            .await
        {
            Ok(u) => u,
            Err(e) => return mail_err(e),
        };
        let all: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
        if let Err(d) = self.refresh_view_entries(&all).await {
            return d;
        }
        let skipped: Vec<u32> = update.skipped.iter().map(|u| u.get()).collect();
        let Some(sel) = &self.selected else {
            return Done::bad("No mailbox selected");
        };
        let changed: std::collections::HashSet<u32> =
            update.changed.iter().map(|u| u.get()).collect();
        for (seq, u) in &targets {
            if skipped.contains(u) {
                continue;
            }
            let Some(vm) = sel.view.get(*seq as usize - 1) else {
                continue;
            };
            if silent && !(self.condstore && changed.contains(u) && unchanged_since.is_some()) {
                continue;
            }
            let mut line = format!("* {seq} FETCH (");
            let mut parts = Vec::new();
            if !silent {
                parts.push(format!("FLAGS {}", flags_text(&vm.flags)));
            }
            if uid {
                parts.push(format!("UID {u}"));
            }
            if self.condstore {
                parts.push(format!("MODSEQ ({})", vm.modseq.get()));
            }
            line.push_str(&parts.join(" "));
            line.push(')');
            out.line(&line);
        }
        if !skipped.is_empty() {
            let ids: Vec<u32> = if uid {
                skipped
            } else {
                targets
                    .iter()
                    .filter(|(_, u)| skipped.contains(u))
                    .map(|(s, _)| *s)
                    .collect()
            };
            return Done::Tagged(format!(
                "OK [MODIFIED {}] Conditional STORE failed for some messages",
                uid_set_text(&ids)
            ));
        }
        Done::ok("STORE completed")
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn search(
        &mut self,
        uid: bool,
        ret: Option<Vec<SearchReturn>>,
        charset: Option<String>,
        key: SearchKey,
        tag: &str,
        out: &mut Out<'_>,
    ) -> Done {
        if let Some(cs) = &charset {
            if !cs.eq_ignore_ascii_case("UTF-8") && !cs.eq_ignore_ascii_case("US-ASCII") {
                return Done::no("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
            }
        }
        let hits = match self.search_hits(&key).await {
            Ok(h) => h,
            Err(d) => return d,
        };
        let ids: Vec<u32> = hits
            .iter()
            .map(|(s, u, _)| if uid { *u } else { *s })
            .collect();
        let max_modseq = hits.iter().map(|h| h.2).max();
        let with_modseq = search::uses_modseq(&key);
        if ret.is_some() || self.rev2 {
            let opts = match ret {
                Some(o) if !o.is_empty() => o,
                _ => vec![SearchReturn::All],
            };
            let mut line = format!("* ESEARCH (TAG \"{tag}\")");
            if uid {
                line.push_str(" UID");
            }
            for o in opts {
                match o {
                    SearchReturn::Min => {
                        if let Some(v) = ids.iter().min() {
                            line.push_str(&format!(" MIN {v}"));
                        }
                    }
                    SearchReturn::Max => {
                        if let Some(v) = ids.iter().max() {
                            line.push_str(&format!(" MAX {v}"));
                        }
                    }
                    SearchReturn::Count => line.push_str(&format!(" COUNT {}", ids.len())),
                    SearchReturn::All => {
                        if !ids.is_empty() {
                            line.push_str(&format!(" ALL {}", uid_set_text(&ids)));
                        }
                    }
                }
            }
            if with_modseq {
                if let Some(m) = max_modseq {
                    line.push_str(&format!(" MODSEQ {m}"));
                }
            }
            out.line(&line);
        } else {
            let mut line = String::from("* SEARCH");
            for id in &ids {
                line.push_str(&format!(" {id}"));
            }
            if with_modseq {
                if let Some(m) = max_modseq {
                    line.push_str(&format!(" (MODSEQ {m})"));
                }
            }
            out.line(&line);
        }
        Done::ok("SEARCH completed")
    }

    /// Messages of the selected mailbox matching `key`: (sequence number, UID, MODSEQ).
    async fn search_hits(&self, key: &SearchKey) -> Result<Vec<(u32, u32, u64)>, Done> {
        let Some(sel) = &self.selected else {
            return Err(Done::bad("No mailbox selected"));
        };
        let needs = search::needs(key);
        let uids: Vec<u32> = sel.view.iter().map(|m| m.uid.get()).collect();
        let meta = if needs.meta || needs.raw {
            self.load_meta(&uids).await?
        } else {
            HashMap::new()
        };
        let session = self.session()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let largest_seq = sel.view.len() as u32;
        let largest_uid = sel.max_uid();
        let mut hits = Vec::new();
        for (i, vm) in sel.view.iter().enumerate() {
            let m = meta.get(&vm.uid.get());
            if (needs.meta || needs.raw) && m.is_none() {
                continue;
            }
            let raw = match (needs.raw, m) {
                (true, Some(m)) => Some(self.ctx.mail.body(session, m).await.map_err(mail_err)?),
                _ => None,
            };
            let c = Candidate {
                seq: i as u32 + 1,
                uid: vm.uid.get(),
                modseq: vm.modseq.get(),
                flags: &vm.flags,
                largest_seq,
                largest_uid,
                meta: m.map(|m| (m.size, m.internal_date, m.tz_offset_minutes)),
                raw: raw.as_deref().map(|v| v.as_slice()),
                now,
            };
            if search::matches(key, &c) {
                hits.push((i as u32 + 1, vm.uid.get(), vm.modseq.get()));
            }
        }
        Ok(hits)
    }

    /// Sort/thread data of the matching messages (headers are decrypted for each).
    async fn sort_items(
        &self,
        uid: bool,
        key: &SearchKey,
    ) -> Result<Vec<crate::sortthread::SortData>, Done> {
        let hits = self.search_hits(key).await?;
        let uids: Vec<u32> = hits.iter().map(|h| h.1).collect();
        let meta = self.load_meta(&uids).await?;
        let session = self.session()?;
        let mut items = Vec::with_capacity(hits.len());
        for (seq, u, _) in hits {
            let Some(m) = meta.get(&u) else { continue };
            let raw = self.ctx.mail.body(session, m).await.map_err(mail_err)?;
            let id = if uid { u } else { seq };
            items.push(crate::sortthread::sort_data(
                id,
                seq,
                m.internal_date,
                m.size,
                &raw,
            ));
        }
        Ok(items)
    }

    fn check_charset(charset: &str) -> Result<(), Done> {
        if charset.eq_ignore_ascii_case("UTF-8") || charset.eq_ignore_ascii_case("US-ASCII") {
            Ok(())
        } else {
            Err(Done::no(
                "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset",
            ))
        }
    }

    /// SORT (RFC 5256 §3).
    pub(crate) async fn sort(
        &mut self,
        uid: bool,
        criteria: &[crate::types::SortCriterion],
        charset: &str,
        key: &SearchKey,
        out: &mut Out<'_>,
    ) -> Done {
        if let Err(d) = Self::check_charset(charset) {
            return d;
        }
        let items = match self.sort_items(uid, key).await {
            Ok(i) => i,
            Err(d) => return d,
        };
        let ids = crate::sortthread::sort(items, criteria);
        let mut line = String::from("* SORT");
        for id in ids {
            line.push_str(&format!(" {id}"));
        }
        out.line(&line);
        Done::ok("SORT completed")
    }

    /// THREAD (RFC 5256 §4).
    pub(crate) async fn thread(
        &mut self,
        uid: bool,
        algorithm: crate::types::ThreadAlgorithm,
        charset: &str,
        key: &SearchKey,
        out: &mut Out<'_>,
    ) -> Done {
        if let Err(d) = Self::check_charset(charset) {
            return d;
        }
        let items = match self.sort_items(uid, key).await {
            Ok(i) => i,
            Err(d) => return d,
        };
        let threads = crate::sortthread::thread(items, algorithm);
        if threads.is_empty() {
            out.line("* THREAD");
        } else {
            out.line(&format!("* THREAD {threads}"));
        }
        Done::ok("THREAD completed")
    }

    pub(crate) async fn copy_or_move(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        raw: &[u8],
        is_move: bool,
        out: &mut Out<'_>,
    ) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let Some(sel) = &self.selected else {
            return Done::bad("No mailbox selected");
        };
        if is_move && sel.read_only {
            return Done::no("[READ-ONLY] Mailbox is read-only");
        }
        let targets = resolve(sel, uid, set);
        let from = sel.mailbox.id;
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let dest = match self.ctx.mail.find_mailbox(session, &name).await {
            Ok(Some(m)) => m,
            Ok(None) => return Done::no("[TRYCREATE] No such mailbox"),
            Err(e) => return mail_err(e),
        };
        if targets.is_empty() {
            return Done::ok(if is_move {
                "MOVE completed"
            } else {
                "COPY completed"
            });
        }
        let uids: Vec<Uid> = targets.iter().filter_map(|(_, u)| Uid::new(*u)).collect();
        if !is_move && self.ctx.config.quota_bytes > 0 {
            let meta = match self
                .load_meta(&targets.iter().map(|t| t.1).collect::<Vec<_>>())
                .await
            {
                Ok(m) => m,
                Err(d) => return d,
            };
            let adding: u64 = meta.values().map(|m| m.size).sum();
            let Ok(session) = self.session() else {
                return Done::bad("Log in first");
            };
            let used = match self.ctx.mail.usage(session).await {
                Ok(u) => u.0,
                Err(e) => return mail_err(e),
            };
            if used + adding > self.ctx.config.quota_bytes {
                return Done::no("[OVERQUOTA] Quota exceeded");
            }
        }
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        let pairs = if is_move {
            self.ctx
                .mail
                .move_messages(session, from, &uids, dest.id)
                .await
        } else {
            self.ctx.mail.copy(session, from, &uids, dest.id).await
        };
        let pairs = match pairs {
            Ok(p) => p,
            Err(e) => return mail_err(e),
        };
        let src: Vec<u32> = pairs.iter().map(|p| p.0.get()).collect();
        let dst: Vec<u32> = pairs.iter().map(|p| p.1.get()).collect();
        // COPYUID lists both sets in the same order (RFC 4315 §3).
        let join = |v: &[u32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let code = format!(
            "COPYUID {} {} {}",
            dest.uid_validity.get(),
            join(&src),
            join(&dst)
        );
        if !is_move {
            return Done::Tagged(format!("OK [{code}] COPY completed"));
        }
        out.line(&format!("* OK [{code}] Moved"));
        let qresync = self.qresync;
        if let Some(sel) = self.selected.as_mut() {
            out.bytes(&sel.remove_uids(&src, qresync));
        }
        Done::ok("MOVE completed")
    }

    pub(crate) async fn expunge(&mut self, uids: Option<&SequenceSet>, out: &mut Out<'_>) -> Done {
        let Some(sel) = &self.selected else {
            return Done::bad("No mailbox selected");
        };
        if sel.read_only {
            return Done::no("[READ-ONLY] Mailbox is read-only");
        }
        let largest = sel.max_uid();
        let candidates: Vec<Uid> = sel
            .view
            .iter()
            .filter(|m| m.flags.contains(&Flag::Deleted))
            .filter(|m| uids.is_none_or(|set| set.contains(m.uid.get(), largest)))
            .map(|m| m.uid)
            .collect();
        let mailbox = sel.mailbox.id;
        if candidates.is_empty() {
            return Done::ok("EXPUNGE completed");
        }
        let Ok(session) = self.session() else {
            return Done::bad("Log in first");
        };
        // Only messages still flagged \Deleted in the store are removed.
        let current = match self.ctx.mail.flags_view(session, mailbox).await {
            Ok(c) => c,
            Err(e) => return mail_err(e),
        };
        let still: Vec<Uid> = candidates
            .into_iter()
            .filter(|u| {
                current
                    .iter()
                    .any(|e| e.uid == *u && e.flags.contains(&Flag::Deleted))
            })
            .collect();
        let (removed, _) = match self.ctx.mail.expunge(session, mailbox, still).await {
            Ok(r) => r,
            Err(e) => return mail_err(e),
        };
        let removed: Vec<u32> = removed.iter().map(|u| u.get()).collect();
        let qresync = self.qresync;
        if let Some(sel) = self.selected.as_mut() {
            out.bytes(&sel.remove_uids(&removed, qresync));
        }
        Done::ok("EXPUNGE completed")
    }

    /// CLOSE (expunges \Deleted silently unless read-only) and UNSELECT.
    pub(crate) async fn close(&mut self, expunge: bool) -> Done {
        let Some(sel) = self.selected.take() else {
            return Done::bad("No mailbox selected");
        };
        if expunge && !sel.read_only {
            let Ok(session) = self.session() else {
                return Done::bad("Log in first");
            };
            if let Err(e) = self.ctx.mail.expunge_deleted(session, sel.mailbox.id).await {
                return mail_err(e);
            }
        }
        Done::ok(if expunge {
            "CLOSE completed"
        } else {
            "UNSELECT completed"
        })
    }
}
