"""Probes against real servers: dovecot and postfix started by the test on loopback,
python http.server (plain and TLS), a listener that never answers, a closed port."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.model import ProbeResult
from agent.sources.probes import run_probe
from agent.sources.settings import ProbeSettings
from tests.integration._mailservers import (
    LOOPBACK,
    Dovecot,
    FullBacklogListener,
    HoldingListener,
    Postfix,
    TlsFiles,
    free_port,
    running_dovecot,
    running_postfix,
    self_signed_cert,
)

pytestmark = pytest.mark.realparts

READ_TIMEOUT_S = 0.3
#: scheduling slack on a loaded 2-core CI machine; the property is "stops near the limit"
MARGIN_S = 2.0


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsFiles]:
    with self_signed_cert() as files:
        yield files


@pytest.fixture(scope="module")
def dovecot(tls: TlsFiles) -> Iterator[Dovecot]:
    with running_dovecot(tls) as server:
        yield server


@pytest.fixture(scope="module")
def postfix(tls: TlsFiles, dovecot: Dovecot) -> Iterator[Postfix]:
    with running_postfix(tls, sasl_socket=dovecot.auth_socket) as server:
        yield server


def probe(**kw: Any) -> ProbeResult:
    settings = ProbeSettings(name="t", kind="tcp", host=LOOPBACK)
    return run_probe(replace(settings, **kw), SystemClock())


def canary(dc: Dovecot) -> dict[str, Any]:
    return {"login_user": dc.user, "login_password_file": dc.password_file}


# --------------------------------------------------------------------------- dovecot
@pytest.mark.parametrize(
    ("kind", "port_attr", "tls_mode"),
    [
        ("imap", "imap_port", "none"),
        ("imap", "imap_port", "starttls"),
        ("imap", "imaps_port", "tls"),
        ("pop3", "pop3_port", "none"),
        ("pop3", "pop3_port", "starttls"),
        ("pop3", "pop3s_port", "tls"),
    ],
)
@pytest.mark.parametrize("login", [False, True])
def test_dovecot_probe_succeeds(
    dovecot: Dovecot, kind: str, port_attr: str, tls_mode: str, login: bool
) -> None:
    extra = canary(dovecot) if login else {}
    result = probe(
        kind=kind, port=getattr(dovecot, port_attr), tls=tls_mode, verify_tls=False, **extra
    )
    assert result.ok, result.detail
    assert result.detail == f"{kind}: greeting OK" + (", login OK" if login else "")
    assert result.latency_ms is not None and result.latency_ms > 0


@pytest.mark.parametrize(("kind", "port_attr"), [("imap", "imaps_port"), ("pop3", "pop3s_port")])
def test_verified_tls_with_server_name_and_no_ca_fails_on_certificate(
    dovecot: Dovecot, kind: str, port_attr: str
) -> None:
    result = probe(kind=kind, port=getattr(dovecot, port_attr), tls="tls", server_name="localhost")
    assert not result.ok
    assert "certificate verification failed" in result.detail
    assert "self-signed" in result.detail or "self signed" in result.detail


@pytest.mark.parametrize(("kind", "port_attr"), [("imap", "imap_port"), ("pop3", "pop3_port")])
def test_wrong_canary_password_fails_with_detail(
    dovecot: Dovecot, tmp_path: Path, kind: str, port_attr: str
) -> None:
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    result = probe(
        kind=kind, port=getattr(dovecot, port_attr), tls="starttls", verify_tls=False,
        login_user=dovecot.user, login_password_file=wrong,
    )
    assert not result.ok
    assert result.detail.startswith(f"{kind}: login rejected:")
    assert "not-the-password" not in result.detail


def test_unreadable_password_file_fails_without_connecting(dovecot: Dovecot) -> None:
    result = probe(
        kind="imap", port=dovecot.imap_port, login_user=dovecot.user,
        login_password_file=dovecot.root / "no-such-file",
    )
    assert not result.ok
    assert result.detail.startswith("imap: cannot read login_password_file")
    assert "No such file" in result.detail
    assert result.latency_ms is None


# --------------------------------------------------------------------------- postfix
@pytest.mark.parametrize("tls_mode", ["none", "starttls"])
def test_smtp_probe_succeeds(postfix: Postfix, tls_mode: str) -> None:
    result = probe(kind="smtp", port=postfix.port, tls=tls_mode, verify_tls=False)
    assert result.ok, result.detail
    assert result.detail == "smtp: greeting 220"


def test_smtp_auth_plain_with_canary_after_starttls(postfix: Postfix, dovecot: Dovecot) -> None:
    result = probe(
        kind="smtp", port=postfix.port, tls="starttls", verify_tls=False, **canary(dovecot)
    )
    assert result.ok, result.detail
    assert result.detail == "smtp: greeting 220, login OK"


def test_smtp_auth_wrong_password_is_rejected(
    postfix: Postfix, dovecot: Dovecot, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("nope\n")
    result = probe(
        kind="smtp", port=postfix.port, tls="starttls", verify_tls=False,
        login_user=dovecot.user, login_password_file=wrong,
    )
    assert not result.ok
    assert result.detail.startswith("smtp: login rejected: 535")


def test_smtp_auth_without_tls_is_not_offered(postfix: Postfix, dovecot: Dovecot) -> None:
    # smtpd_tls_auth_only = yes: a probe that would send the password in clear must fail.
    result = probe(kind="smtp", port=postfix.port, **canary(dovecot))
    assert not result.ok
    assert result.detail == "smtp: server does not offer AUTH PLAIN"


# --------------------------------------------------------------------------- timeouts
@pytest.mark.parametrize(
    ("kind", "tls_mode", "step"),
    [
        ("imap", "none", "reading greeting"),
        ("pop3", "none", "reading greeting"),
        ("smtp", "none", "reading greeting"),
        ("http", "none", "reading response headers"),
        ("tcp", "none", "reading banner"),
        ("imap", "tls", "doing TLS handshake"),
        ("http", "tls", "doing TLS handshake"),
    ],
)
def test_probe_times_out_within_its_limit(kind: str, tls_mode: str, step: str) -> None:
    extra = {"expect_text": "SSH-"} if kind == "tcp" else {}
    with HoldingListener() as silent:
        result = probe(
            kind=kind, port=silent.port, tls=tls_mode, read_timeout_s=READ_TIMEOUT_S,
            connect_timeout_s=1.0, **extra,
        )
    assert not result.ok
    assert result.detail == f"{kind}: timeout after {READ_TIMEOUT_S}s {step}"
    assert result.latency_ms is not None
    assert READ_TIMEOUT_S * 1000 <= result.latency_ms < (READ_TIMEOUT_S + MARGIN_S) * 1000


@pytest.mark.parametrize("kind", ["imap", "pop3", "smtp", "http", "tcp"])
def test_connect_times_out_within_its_limit(kind: str) -> None:
    with FullBacklogListener() as full:
        result = probe(kind=kind, port=full.port, connect_timeout_s=READ_TIMEOUT_S)
    assert not result.ok
    assert result.detail == (
        f"{kind}: timeout after {READ_TIMEOUT_S}s connecting to {LOOPBACK}:{full.port}"
    )
    assert result.latency_ms is not None
    assert READ_TIMEOUT_S * 1000 <= result.latency_ms < (READ_TIMEOUT_S + MARGIN_S) * 1000


@pytest.mark.parametrize("kind", ["imap", "pop3", "smtp", "http", "tcp"])
def test_connection_refused_fails_fast(kind: str) -> None:
    port = free_port()
    result = probe(kind=kind, port=port, connect_timeout_s=5.0, read_timeout_s=5.0)
    assert not result.ok
    assert result.detail == f"{kind}: connection refused by {LOOPBACK}:{port}"
    assert result.latency_ms is not None and result.latency_ms < 1000


def test_tcp_connect_only_succeeds_against_a_silent_listener() -> None:
    with HoldingListener() as silent:
        result = probe(kind="tcp", port=silent.port)
    assert result.ok
    assert result.detail == "tcp: connected"


def test_tcp_banner_from_real_smtp(postfix: Postfix) -> None:
    assert probe(kind="tcp", port=postfix.port, expect_text="ESMTP Postfix").ok
    missing = probe(kind="tcp", port=postfix.port, expect_text="SSH-2.0", read_timeout_s=0.3)
    assert not missing.ok
    assert missing.detail == "tcp: timeout after 0.3s reading banner"


# --------------------------------------------------------------------------- http
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/webmail/":
            body = b"<html><title>Roundcube Webmail</title></html>"
            self.send_response(200)
        else:
            body = b"not here"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        return


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def web_tls(tls: TlsFiles) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("path", "status", "text", "ok", "detail"),
    [
        ("/webmail/", 200, None, True, "http: status 200"),
        ("/webmail/", 200, "Roundcube", True, "http: status 200, expect_text found"),
        ("/missing", 404, None, True, "http: status 404"),
        ("/missing", 200, None, False, "http: status 404 Not Found, expected 200"),
        (
            "/webmail/", 200, "Horde", False,
            "http: status 200 but expect_text 'Horde' not in the first 45 bytes of the body",
        ),
    ],
)
def test_http_status_and_text(
    web: int, path: str, status: int, text: str | None, ok: bool, detail: str
) -> None:
    result = probe(kind="http", port=web, http_path=path, expect_status=status, expect_text=text)
    assert (result.ok, result.detail) == (ok, detail)


def test_https_without_verification_succeeds(web_tls: int) -> None:
    result = probe(
        kind="http", port=web_tls, tls="tls", verify_tls=False,
        http_path="/webmail/", expect_text="Webmail",
    )
    assert result.ok, result.detail
    assert result.detail == "http: status 200, expect_text found"


def test_https_with_verification_fails_on_self_signed_certificate(web_tls: int) -> None:
    result = probe(kind="http", port=web_tls, tls="tls", server_name="localhost")
    assert not result.ok
    assert result.detail.startswith("http: TLS certificate verification failed")
