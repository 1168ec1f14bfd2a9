#!/usr/bin/env python3
"""A small IMAP helper for the client tests, on Python's own imaplib over implicit TLS.

Usage:
  imap_tool.py HOST PORT USER PASSWORD CAFILE append MAILBOX < messages
      stdin holds messages, each as a line "FLAGS\\tLENGTH\\n" (FLAGS space-separated IMAP
      flags or "-") followed by LENGTH bytes; appends them in order and prints one
      "APPENDUID uidvalidity uid" line per message.
  imap_tool.py HOST PORT USER PASSWORD CAFILE dump
      prints one line per message of every mailbox:
      "MAILBOX\\tUID\\tFLAGS\\tMESSAGE-ID\\tHEX-OF-BYTES", flags space-separated and
      sorted ("-" for none), then "COUNT\\tMAILBOX\\tN" per mailbox (from STATUS MESSAGES).
Set IMAP_DEBUG=1 to print the whole exchange on stderr. Exits 1 with "FAILED: ..." when
the server answers NO/BAD or something unexpected.
"""

import imaplib
import os
import re
import socket
import ssl
import sys


def fail(msg):
    print(f"FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def ok(what, typ, data):
    if typ != "OK":
        fail(f"{what} answered {typ} {data}")
    return data


def connect(host, port, user, password, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=30)
    # imaplib writes a literal and its CRLF separately: without this, Nagle's algorithm
    # and delayed ACKs add 40 ms to every APPEND.
    imap.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if os.environ.get("IMAP_DEBUG"):
        imap.debug = 4
    ok("LOGIN", *imap.login(user, password))
    return imap


def quote(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def append(imap, mailbox):
    data = sys.stdin.buffer
    n = 0
    while True:
        head = data.readline()
        if not head:
            break
        flags, length = head.decode().rstrip("\n").split("\t")
        msg = data.read(int(length))
        if len(msg) != int(length):
            fail("short message on stdin")
        flags = "" if flags == "-" else flags
        typ, resp = imap.append(quote(mailbox), f"({flags})", None, msg)
        ok(f"APPEND #{n + 1} to {mailbox} with flags ({flags})", typ, resp)
        m = re.search(rb"APPENDUID (\d+) (\d+)", resp[0] or b"")
        if not m:
            fail(f"APPEND #{n + 1} answered {resp}, without APPENDUID")
        print(f"APPENDUID {m.group(1).decode()} {m.group(2).decode()}")
        n += 1


LIST_RE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>"[^"]*"|NIL) (?P<name>.*)$')


def mailbox_names(imap):
    typ, data = imap.list()
    ok("LIST", typ, data)
    names = []
    for line in data:
        if isinstance(line, tuple):  # a name sent as a literal
            names.append(line[1].decode())
            continue
        m = LIST_RE.match(line)
        if not m:
            fail(f"unparsable LIST line {line!r}")
        if b"\\noselect" in m.group("attrs").lower():
            continue
        name = m.group("name").decode()
        if name.startswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        names.append(name)
    return sorted(names)


FETCH_RE = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)")


def dump(imap):
    for name in mailbox_names(imap):
        typ, data = imap.select(quote(name), readonly=True)
        ok(f"EXAMINE {name}", typ, data)
        count = int(data[0])
        if count:
            typ, data = imap.fetch("1:*", "(UID FLAGS BODY.PEEK[])")
            ok(f"FETCH 1:* in {name}", typ, data)
            for item in data:
                if not isinstance(item, tuple):
                    continue
                meta, body = item
                uid = flags = None
                for m in FETCH_RE.finditer(meta):
                    if m.group(1):
                        uid = int(m.group(1))
                    else:
                        flags = m.group(2).decode()
                if uid is None or flags is None:
                    # FLAGS may follow the literal: look in the rest of the response.
                    fail(f"FETCH response without UID/FLAGS before the body: {meta!r}")
                mid = re.search(rb"(?im)^Message-ID:\s*(\S+)", body)
                mid = mid.group(1).decode() if mid else "-"
                fl = " ".join(sorted(flags.split())) or "-"
                print(f"{name}\t{uid}\t{fl}\t{mid}\t{body.hex()}")
        typ, data = imap.status(quote(name), "(MESSAGES)")
        ok(f"STATUS {name}", typ, data)
        m = re.search(rb"MESSAGES (\d+)", data[0])
        print(f"COUNT\t{name}\t{m.group(1).decode()}")
        imap.unselect()


def main():
    if len(sys.argv) < 7:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port, user, password, cafile, cmd = sys.argv[1:7]
    imap = connect(host, port, user, password, cafile)
    if cmd == "append" and len(sys.argv) == 8:
        append(imap, sys.argv[7])
    elif cmd == "dump":
        dump(imap)
    else:
        fail(f"unknown command {sys.argv[6:]}")
    imap.logout()


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:
        fail(f"{type(e).__name__}: {e}")
