"""Getting an alert to a person: notifiers, and who is told in what order.

A group's `contacts` name notifiers (`[notifiers.NAME]`) in the order they are tried.
An alert counts as delivered only when its notifier confirms it: an HTTP 2xx for a
webhook, exit 0 for a command, the SMTP server's acceptance for every recipient of an
email. A failed delivery is tried again with a growing wait.
One delivered but not acknowledged (`ack ID`) within `[alerts] ack_within_s` goes to
the next contact (incident 004: the monitor saw the outage, nobody heard). `watch`
runs the deliveries (coordinator/cli.py).
"""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from coordinator.settings import Notifier

#: the longest wait between two tries of one delivery
MAX_RETRY_S = 3600.0


def deliver(notifier: Notifier, alert: Mapping[str, Any]) -> str | None:
    """Hand the alert over; None when the notifier confirmed it, else why not."""
    body = json.dumps(alert, sort_keys=True).encode()
    if notifier.kind == "email":
        return _email(notifier, alert, body)
    if notifier.kind == "webhook":
        request = urllib.request.Request(notifier.url, data=body, method="POST",  # noqa: S310
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=notifier.timeout_s) as reply:  # noqa: S310
                status = int(reply.status)
        except urllib.error.HTTPError as exc:
            return f"webhook answered {exc.code}"
        except (OSError, ValueError) as exc:
            return f"webhook failed: {exc}"
        return None if 200 <= status < 300 else f"webhook answered {status}"
    try:
        done = subprocess.run(list(notifier.argv), input=body, capture_output=True,
                              timeout=notifier.timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"command failed: {exc}"
    if done.returncode != 0:
        return f"command exited {done.returncode}: " \
               f"{done.stderr.decode(errors='replace')[-200:]}"
    return None


def _plain(text: object, limit: int) -> str:
    """Text an agent may have written, for a mail header or line: printable, one line."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:limit]


def _email(notifier: Notifier, alert: Mapping[str, Any], body: bytes) -> str | None:
    """The alert by mail; delivered when the SMTP server accepts it for every recipient."""
    msg = EmailMessage()
    msg["Subject"] = (f"[nodewarden] {_plain(alert.get('kind'), 40)} "
                      f"{_plain(alert.get('scope'), 200)}")
    msg["From"] = notifier.sender
    msg["To"] = ", ".join(notifier.to)
    msg.set_content(f"{_plain(alert.get('text'), 2000)}\n\nacknowledge: "
                    f"nodewarden-coordinator ack {alert.get('alert')}\n\n"
                    f"{body.decode()}\n")
    try:
        with smtplib.SMTP(notifier.smtp_host, notifier.smtp_port,
                          timeout=notifier.timeout_s) as smtp:
            if notifier.starttls:
                smtp.starttls(context=ssl.create_default_context())
            refused = smtp.send_message(msg, notifier.sender, list(notifier.to))
    except (OSError, smtplib.SMTPException) as exc:
        return f"email failed: {exc}"
    return f"email refused for {', '.join(refused)}" if refused else None


def retry_in(attempts: int) -> float:
    """The wait before try number `attempts + 1`: 30 s, doubling, at most MAX_RETRY_S."""
    return float(min(30.0 * 2 ** min(attempts, 20), MAX_RETRY_S))
