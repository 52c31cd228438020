"""Split a service log line into its fixed fields: the program that wrote it and its message.

Log signatures (docs/signatures.md) match the *program* at its fixed position and the
message *from its start*, so text a remote client supplies (a HELO name, a user name, a
sender) can never satisfy a signature or name its subject: it sits in the middle of some
other program's message. The formats a mail host's logs come in:

=========================================  ============================  =================
line                                       program                       message starts
=========================================  ============================  =================
``Oct 20 03:18:44 mx1 postfix/smtpd[12]:``  ``postfix/smtpd``              after ``]: ``
``2024-10-20T03:18:44.1+00:00 mx1 tag:``    the tag                       after ``: ``
``… mx1 dovecot: imap-login: …``           ``dovecot/imap-login``        after ``imap-login: ``
``… mx1 dovecot: auth-worker(7): Error:``  ``dovecot/auth-worker``        after ``Error: ``
``Oct 20 03:18:44 imap-login: Info: …``    ``dovecot/imap-login``        after ``Info: ``
``@4000000063d1f3e01c9c3a34 auth: Info:``  ``dovecot/auth``               after ``Info: ``
``2024-10-20 03:18:44 #12(normal) <id>;``  ``rspamd``                     at ``<id>; ``
``postfix/smtpd[12]: warning: …``          ``postfix/smtpd``              after ``]: ``
=========================================  ============================  =================

* A timestamp is optional: BSD (``Oct 20 03:18:44``, optional fraction), ISO 8601
  (``2024-10-20T03:18:44.123+00:00`` or with a space, as dovecot's ``log_timestamp`` and
  tai64nlocal print it), runit's svlogd (``2024-10-20_03:18:44.12345``) or TAI64N
  (``@4000000063d1f3e01c9c3a34``, daemontools/multilog).
* Syslog puts a host name before the tag; a daemon's own log file does not. The first
  token decides: ending in ``:`` (after an optional ``[pid]`` or ``(pid)``) it is the tag.
* dovecot writes its process name first (``imap-login``, ``auth``, ``auth-worker(7)``),
  both through syslog (after the ``dovecot:`` tag) and in its own ``log_path`` file (in the
  tag's place, always followed by a level word). Either way the program is
  ``dovecot/PROCESS`` and a level word (``Info:``, ``Warning:``, ``Error:``, ``Fatal:``,
  ``Panic:``, ``Debug:``) is taken off the message. A mail process's prefix carries the
  user's name (``imap(alice)<12><sess>:``), and so does 2.4's auth process
  (``auth(alice,192.0.2.7,sasl:plain)<sess>:``): the program is ``dovecot/imap`` or
  ``dovecot/auth`` and the message starts at the ``(`` (a signature reads such a prefix
  from the right), in syslog and in dovecot's own log file alike.
* rspamd's own log (``#PID(process) <id>; module; function: text``) is program ``rspamd``.

A line none of these fit has program ``""``: no log signature (they all name a program)
matches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STAMP = re.compile(
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"
    r"|\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d(?:\.\d+)?"
    r"|@[0-9a-fA-F]{24}) +"
)
#: `tag`, `tag[pid]` or `tag(pid)`, then ':' and one optional space
_TAG = re.compile(
    r"(?P<tag>[A-Za-z0-9_][A-Za-z0-9_./@+-]{0,63})"
    r"(?:\[(?P<pid>\d{1,10})\]|\((?P<ppid>\d{1,10})\))?: ?"
)
_HOST = re.compile(r"(?P<host>[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}) +")
_RSPAMD = re.compile(r"#(?P<pid>\d{1,10})\([a-z_]{1,32}\) +")
#: dovecot's process prefix after the `dovecot:` syslog tag
_DOVECOT_PROCESS = re.compile(r"(?P<proc>[a-z][a-z0-9-]{0,31})(?:\((?P<pid>\d{1,10})\))?: ")
_DOVECOT_MAIL_PROCESS = re.compile(r"(?P<proc>[a-z][a-z0-9-]{0,31})(?=\()")
_LEVEL = re.compile(r"(?:Info|Warning|Error|Fatal|Panic|Debug): ")
DOVECOT = "dovecot"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log line's fixed fields: who wrote it, and what it said (see the module doc)."""

    program: str
    message: str
    pid: str = ""
    host: str = ""


def parse_record(line: str) -> LogRecord:
    """The program and message of one log line (program "" when no format fits)."""
    pos = 0
    m = _STAMP.match(line)
    if m is not None:
        pos = m.end()
    tag = _TAG.match(line, pos)
    if tag is not None and not _looks_like_host(line, tag.end()):
        return _tagged(line, tag, host="", own_log=True)
    rspamd = _RSPAMD.match(line, pos)
    if rspamd is not None:
        return LogRecord("rspamd", line[rspamd.end():], rspamd.group("pid"))
    own = _DOVECOT_MAIL_PROCESS.match(line, pos)
    if own is not None:  # dovecot 2.4's own log: "auth(user,rip,sasl:plain)<sess>: Info:"
        return LogRecord(f"{DOVECOT}/{own.group('proc')}", line[own.end():])
    host = _HOST.match(line, pos)
    if host is not None:
        tag = _TAG.match(line, host.end())
        if tag is not None:
            return _tagged(line, tag, host=host.group("host"), own_log=False)
    return LogRecord("", line[pos:])


def _looks_like_host(line: str, end: int) -> bool:
    """A tag match that ends without ': ' may be an IPv6 host ("2001:db8::1 postfix...")."""
    return line[end - 1:end] != " " and end < len(line)


def _tagged(line: str, tag: re.Match[str], *, host: str, own_log: bool) -> LogRecord:
    name = tag.group("tag")
    pid = tag.group("pid") or tag.group("ppid") or ""
    message = line[tag.end():]
    if name == DOVECOT:
        proc = _DOVECOT_PROCESS.match(message)
        if proc is not None:
            message = message[proc.end():]
            level = _LEVEL.match(message)
            if level is not None:
                message = message[level.end():]
            return LogRecord(f"{DOVECOT}/{proc.group('proc')}", message,
                             proc.group("pid") or pid, host)
        mail = _DOVECOT_MAIL_PROCESS.match(message)
        if mail is not None:
            return LogRecord(f"{DOVECOT}/{mail.group('proc')}", message[mail.end():], pid, host)
        return LogRecord(DOVECOT, message, pid, host)
    if own_log:
        level = _LEVEL.match(message)
        if level is not None:  # dovecot's own log_path file: "imap-login: Info: ..."
            return LogRecord(f"{DOVECOT}/{name}", message[level.end():], pid, host)
    return LogRecord(name, message, pid, host)
