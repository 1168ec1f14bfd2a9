#!/usr/bin/env python3
"""Drives Coffer with the `imapclient` library over implicit TLS.

Usage: imapclient_check.py HOST PORT USER PASSWORD CAFILE

Checks, in order: certificate verification, LOGIN, APPEND (with APPENDUID), ENABLE
CONDSTORE, SELECT with HIGHESTMODSEQ, FETCH FLAGS MODSEQ, STORE, FETCH CHANGEDSINCE,
ENABLE QRESYNC with SELECT (QRESYNC ...), UID MOVE with COPYUID and VANISHED, and IDLE
seeing another connection's APPEND in under a second. Exits 1 with "FAILED: ..." on
the first check that does not hold; prints "imapclient checks: OK" when all pass.
"""

import re
import socket
import ssl
import sys
import threading
import time

import imapclient
from imapclient.response_parser import parse_fetch_response

STEP = ["start"]


def step(name):
    STEP[0] = name
    print(f"-- {name}", flush=True)


def fail(msg):
    print(f"FAILED in step '{STEP[0]}': {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def message(n, tag):
    return (
        f"From: Sender {n} <sender{n}@example.org>\r\n"
        f"To: someone@example.org\r\n"
        f"Subject: {tag} message {n}\r\n"
        f"Message-ID: <{tag}-{n}@example.org>\r\n"
        f"Date: Mon, 02 Nov 2026 10:{n % 60:02d}:00 +0000\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n"
        f"Body of {tag} message {n}.\r\n"
    ).encode()


def connect(host, port, user, password, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    # The certificate names 127.0.0.1 and localhost: verify it fully, hostname included.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    c = imapclient.IMAPClient(host, port=port, ssl=True, ssl_context=ctx, timeout=20)
    # imaplib writes a literal and its CRLF separately: without this, Nagle's algorithm and
    # delayed ACKs add 40 ms to every APPEND, which would blur the IDLE timing.
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.login(user, password)
    return c


def parse_uid_set(text):
    """'3:5,7' -> {3, 4, 5, 7}"""
    out = set()
    for part in text.split(","):
        if ":" in part:
            a, b = part.split(":")
            a, b = int(a), int(b)
            out.update(range(min(a, b), max(a, b) + 1))
        elif part:
            out.add(int(part))
    return out


def untagged(client, key):
    """Raw untagged responses imaplib stored under `key` (bytes), as a list of bytes."""
    return [
        x if isinstance(x, bytes) else str(x).encode()
        for x in client._imap.untagged_responses.get(key, [])
        if x is not None
    ]


def raw_qresync_select(client, mailbox, uidvalidity, modseq):
    """SELECT mailbox (QRESYNC (uidvalidity modseq)): imapclient has no API for it, so it
    goes through imaplib. Returns (tagged data, {untagged type: [raw data]})."""
    imap = client._imap
    imap.untagged_responses = {}
    typ, data = imap._simple_command("SELECT", mailbox, f"(QRESYNC ({uidvalidity} {modseq}))")
    check(typ == "OK", f"SELECT {mailbox} (QRESYNC ({uidvalidity} {modseq})) answered {typ} {data}")
    imap.state = "SELECTED"
    resp = {k: list(v) for k, v in imap.untagged_responses.items()}
    imap.untagged_responses = {}
    return data, resp


def fetches_from_raw(raw_fetch_lines):
    """imaplib keeps '* 3 FETCH (...)' as b'3 (...)'; parse them like imapclient does."""
    out = {}
    for line in raw_fetch_lines:
        parsed = parse_fetch_response([line], uid_is_key=True)
        out.update(parsed)
    return out


def main():
    if len(sys.argv) != 6:
        print(__doc__)
        sys.exit(2)
    host, port, user, password, cafile = sys.argv[1:]
    port = int(port)

    step("connect with a verified certificate and LOGIN")
    c = connect(host, port, user, password, cafile)
    caps = c.capabilities()
    for cap in (b"CONDSTORE", b"QRESYNC", b"MOVE", b"UIDPLUS", b"IDLE", b"ENABLE"):
        check(cap in caps, f"capability {cap!r} missing from {caps}")

    step("APPEND 5 messages")
    appended = []
    for n in range(1, 6):
        resp = c.append("INBOX", message(n, "imapclient"), flags=())
        m = re.search(rb"APPENDUID (\d+) (\d+)", resp or b"")
        check(m, f"APPEND {n} answered {resp!r}, without [APPENDUID uidvalidity uid]")
        appended.append(int(m.group(2)))
    check(len(set(appended)) == 5 and appended == sorted(appended), f"APPENDUIDs {appended}")

    step("ENABLE CONDSTORE and SELECT INBOX")
    enabled = c.enable("CONDSTORE")
    check(b"CONDSTORE" in [e.upper() for e in enabled], f"ENABLE CONDSTORE answered {enabled}")
    sel = c.select_folder("INBOX")
    check(sel.get(b"EXISTS") == 5, f"SELECT INBOX: EXISTS {sel.get(b'EXISTS')}, expected 5: {sel}")
    check(b"HIGHESTMODSEQ" in sel, f"SELECT INBOX after ENABLE CONDSTORE lacks HIGHESTMODSEQ: {sel}")
    uidvalidity = sel[b"UIDVALIDITY"]
    highest0 = sel[b"HIGHESTMODSEQ"]

    step("FETCH FLAGS MODSEQ")
    # imapclient 3 keeps only the UIDs asked for, so ask for every UID rather than 1:*.
    all_uids = c.search("ALL")
    check(sorted(all_uids) == appended, f"SEARCH ALL returned {all_uids}, appended {appended}")
    f0 = c.fetch(all_uids, ["FLAGS", "MODSEQ"])
    check(sorted(f0) == appended, f"FETCH returned UIDs {sorted(f0)}, appended {appended}")
    for uid, data in f0.items():
        check(b"MODSEQ" in data, f"FETCH MODSEQ for UID {uid} has no MODSEQ: {data}")
        check(data[b"MODSEQ"][0] <= highest0, f"UID {uid} MODSEQ {data[b'MODSEQ']} > HIGHESTMODSEQ {highest0}")
        check(b"\\Seen" not in data[b"FLAGS"], f"UID {uid} flags {data[b'FLAGS']} before any STORE")
    base = max(d[b"MODSEQ"][0] for d in f0.values())

    step("STORE flags on two messages")
    changed = [appended[1], appended[3]]
    r = c.add_flags(changed, [b"\\Seen", b"\\Flagged"])
    for uid in changed:
        check(uid in r and b"\\Flagged" in r[uid] and b"\\Seen" in r[uid],
              f"STORE +FLAGS answered {r} for UID {uid}")
    r = c.set_flags([appended[1]], [b"\\Answered", b"$Label1"])
    check(set(r.get(appended[1], ())) == {b"\\Answered", b"$Label1"},
          f"STORE FLAGS (\\Answered $Label1) answered {r}")

    step("FETCH (FLAGS) (CHANGEDSINCE base)")
    f1 = c.fetch(all_uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {base}"])
    check(sorted(f1) == sorted(changed),
          f"UID FETCH <all> (FLAGS) (CHANGEDSINCE {base}) returned UIDs {sorted(f1)}, expected only {sorted(changed)}: {f1}")
    for uid, data in f1.items():
        check(b"MODSEQ" in data and data[b"MODSEQ"][0] > base,
              f"CHANGEDSINCE result for UID {uid} has MODSEQ {data.get(b'MODSEQ')} not > {base}")
    check(set(f1[appended[1]][b"FLAGS"]) == {b"\\Answered", b"$Label1"}, f"flags of UID {appended[1]}: {f1}")
    check(set(f1[appended[3]][b"FLAGS"]) == {b"\\Seen", b"\\Flagged"}, f"flags of UID {appended[3]}: {f1}")
    f2 = c.fetch(all_uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {max(d[b'MODSEQ'][0] for d in f1.values())}"])
    check(f2 == {}, f"CHANGEDSINCE the newest MODSEQ should return nothing, got {f2}")

    step("ENABLE QRESYNC, SELECT INBOX (QRESYNC (uidvalidity base))")
    c.unselect_folder()
    enabled = c.enable("QRESYNC")
    check(b"QRESYNC" in [e.upper() for e in enabled], f"ENABLE QRESYNC answered {enabled}")
    _, resp = raw_qresync_select(c, "INBOX", uidvalidity, base)
    check(not resp.get("VANISHED"), f"nothing was expunged, yet VANISHED: {resp.get('VANISHED')}")
    fetched = fetches_from_raw(resp.get("FETCH", []))
    check(sorted(fetched) == sorted(changed),
          f"QRESYNC SELECT should FETCH exactly UIDs {sorted(changed)}, got {sorted(fetched)}: {resp.get('FETCH')}")
    for uid, data in fetched.items():
        check(b"MODSEQ" in data and b"FLAGS" in data, f"QRESYNC FETCH for UID {uid} lacks FLAGS/MODSEQ: {data}")
    hm = [x for x in resp.get("HIGHESTMODSEQ", [])]
    check(hm, f"QRESYNC SELECT without HIGHESTMODSEQ: {resp}")
    before_move = int(hm[0])

    step("UID MOVE two messages to Archive")
    archive = c.folder_status("Archive", [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES"])
    moved = [appended[0], appended[2]]
    subjects = {u: d[b"BODY[HEADER.FIELDS (SUBJECT)]"]
                for u, d in c.fetch(moved, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]).items()}
    c._imap.untagged_responses = {}
    c.move(moved, "Archive")
    copyuid = untagged(c, "COPYUID")
    check(copyuid, "UID MOVE: no [COPYUID ...] in an untagged OK (RFC 6851 §4.3 with UIDPLUS); "
          f"untagged responses: {c._imap.untagged_responses}")
    parts = copyuid[0].split()
    check(len(parts) == 3, f"malformed COPYUID {copyuid[0]!r}")
    cu_validity, cu_src, cu_dst = int(parts[0]), parse_uid_set(parts[1].decode()), parse_uid_set(parts[2].decode())
    check(cu_validity == archive[b"UIDVALIDITY"],
          f"COPYUID UIDVALIDITY {cu_validity} is not Archive's {archive[b'UIDVALIDITY']}")
    check(cu_src == set(moved), f"COPYUID source set {sorted(cu_src)}, moved {moved}")
    check(len(cu_dst) == 2 and min(cu_dst) >= archive[b"UIDNEXT"],
          f"COPYUID destination set {sorted(cu_dst)} (Archive UIDNEXT was {archive[b'UIDNEXT']})")
    check(not untagged(c, "EXPUNGE"), f"with QRESYNC enabled the server must send VANISHED, not EXPUNGE: {untagged(c, 'EXPUNGE')}")
    vanished = untagged(c, "VANISHED")
    check(vanished, f"UID MOVE with QRESYNC enabled sent no VANISHED: {c._imap.untagged_responses}")
    check(parse_uid_set(b",".join(vanished).decode()) == set(moved), f"VANISHED {vanished}, moved {moved}")
    st = c.folder_status("INBOX", [b"MESSAGES"])
    check(st[b"MESSAGES"] == 3, f"INBOX has {st[b'MESSAGES']} messages after moving 2 of 5")
    remaining = sorted(c.search("ALL"))
    check(remaining == sorted(set(appended) - set(moved)), f"INBOX UIDs after MOVE: {remaining}")

    step("the moved messages are in Archive under their COPYUID UIDs")
    sel = c.select_folder("Archive", readonly=True)
    check(sel[b"EXISTS"] == archive[b"MESSAGES"] + 2, f"Archive EXISTS {sel[b'EXISTS']}")
    got = c.fetch(sorted(cu_dst), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    check(sorted(got) == sorted(cu_dst), f"FETCH of COPYUID destination UIDs {sorted(cu_dst)} gave {sorted(got)}")
    # COPYUID pairs source and destination in order.
    for src, dst in zip(sorted(cu_src), sorted(cu_dst)):
        check(got[dst][b"BODY[HEADER.FIELDS (SUBJECT)]"] == subjects[src],
              f"Archive UID {dst} has {got[dst]}, expected the subject of INBOX UID {src}: {subjects[src]!r}")

    step("SELECT INBOX (QRESYNC (uidvalidity before-move)) reports the moved UIDs VANISHED (EARLIER)")
    _, resp = raw_qresync_select(c, "INBOX", uidvalidity, before_move)
    vanished = resp.get("VANISHED", [])
    check(vanished, f"no VANISHED (EARLIER) after MOVE: {resp}")
    v = vanished[0].decode() if isinstance(vanished[0], bytes) else vanished[0]
    check(v.upper().startswith("(EARLIER)"), f"VANISHED without (EARLIER) in SELECT: {v}")
    check(parse_uid_set(v.split()[1]) >= set(moved), f"VANISHED (EARLIER) {v} lacks moved {moved}")
    check(not parse_uid_set(v.split()[1]) & set(remaining), f"VANISHED (EARLIER) {v} names live UIDs {remaining}")
    c.unselect_folder()

    step("IDLE sees another connection's APPEND in under a second")
    sel = c.select_folder("INBOX")
    exists_before = sel[b"EXISTS"]
    c.idle()
    other = connect(host, port, user, password, cafile)
    time.sleep(0.3)  # let the IDLE settle before the change
    t0 = time.monotonic()
    other.append("INBOX", message(99, "idle"))
    appended_at = time.monotonic() - t0
    seen_at = None
    responses = []
    deadline = t0 + 5
    while time.monotonic() < deadline and seen_at is None:
        for r in c.idle_check(timeout=max(0.05, deadline - time.monotonic())):
            responses.append(r)
            if len(r) >= 2 and r[1] == b"EXISTS":
                seen_at = time.monotonic() - t0
                check(r[0] == exists_before + 1, f"IDLE: EXISTS {r[0]}, expected {exists_before + 1}")
    c.idle_done()
    other.logout()
    check(seen_at is not None, f"IDLE: no EXISTS within 5 s of the other connection's APPEND; got {responses}")
    print(f"   APPEND took {appended_at * 1000:.0f} ms, EXISTS arrived {seen_at * 1000:.0f} ms after it began")
    check(seen_at < 1.0, f"IDLE: EXISTS arrived {seen_at:.3f} s after the APPEND began, not under 1 s")

    c.logout()
    print("imapclient checks: OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # any protocol error is a failed check, with its step
        import traceback
        traceback.print_exc()
        fail(f"{type(e).__name__}: {e}")
