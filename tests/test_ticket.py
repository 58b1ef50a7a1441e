"""The signed glexec mapping ticket (scas_server/ticket.py, docs/ticket.md)."""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scas_server.ticket import (
    KeyFileError,
    SigningKey,
    Ticket,
    TicketBadSignature,
    TicketExpired,
    TicketMalformed,
    TicketNotYetValid,
    TicketParameterError,
    TicketWrongCaller,
    TicketWrongHost,
    TicketWrongKey,
    cmd_keygen,
    keygen,
    parse_public_key,
    sign_ticket,
    verify_ticket,
)

DOC = Path(__file__).parent.parent / "docs" / "ticket.md"
NOW = 1795331954
KEY = SigningKey.from_private(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
PUB = KEY.verify_key()
JANE = "/DC=org/DC=example/OU=People/CN=Jane Doe 12345"


def _sign(**overrides: object) -> str:
    args: dict[str, object] = {
        "host": "wn01.example.org",
        "caller_uid": 1001,
        "user": "dteam001",
        "uid": 40001,
        "gid": 4000,
        "sgids": (4001, 4002),
        "subject": JANE,
        "now": NOW,
    }
    args.update(overrides)
    return sign_ticket(KEY, **args)  # type: ignore[arg-type]


def _verify(ticket: str, **overrides: object) -> Ticket:
    args: dict[str, object] = {"now": NOW + 1, "host": "wn01.example.org", "caller_uid": 1001}
    args.update(overrides)
    return verify_ticket(ticket, PUB, **args)  # type: ignore[arg-type]


def _resign(text: bytes) -> str:
    """A correctly signed wire ticket around arbitrary text (to test the strict parser)."""
    signature = KEY.private_key.sign(text)
    return f"{base64.b64encode(text).decode()}.{base64.b64encode(signature).decode()}"


def test_ticket_sign_verify_roundtrip() -> None:
    fields = _verify(_sign(host="WN01.Example.ORG"))
    assert fields.host == "wn01.example.org"
    mapping = (fields.user, fields.uid, fields.gid, fields.sgids)
    assert mapping == ("dteam001", 40001, 4000, (4001, 4002))
    assert fields.subject == JANE and fields.caller_uid == 1001
    assert fields.not_before == NOW - 30 and fields.not_after == NOW + 120
    assert re.fullmatch(r"[0-9a-f]{32}", fields.nonce)


def test_ticket_nonces_differ() -> None:
    assert _verify(_sign()).nonce != _verify(_sign()).nonce


def test_ticket_accepts_datetime_now() -> None:
    moment = datetime.fromtimestamp(NOW, UTC)
    assert _verify(_sign(now=moment), now=moment).not_after == NOW + 120


def test_ticket_doc_example_verifies() -> None:
    """docs/ticket.md is the C verifier's contract: its example must be exactly what we do."""
    doc = DOC.read_text()
    line = re.search(r"^scas_ticket_key = ed25519:\S+$", doc, re.M)
    assert line is not None and line.group(0) == PUB.line()
    wire = re.search(r"^(dmVy\S+)\n(\.\S+)$", doc, re.M)
    assert wire is not None
    ticket = wire.group(1) + wire.group(2)
    host = "wn01.example.org"
    fields = verify_ticket(ticket, line.group(0), now=NOW, host=host, caller_uid=1001)
    text_block = re.search(r"^```\n(version=1\n.*?)```$", doc, re.M | re.S)
    assert text_block is not None
    assert base64.b64decode(ticket.split(".")[0]).decode() == text_block.group(1)
    assert fields.text().decode() == text_block.group(1)
    assert ticket == _sign(nonce="00112233445566778899aabbccddeeff")  # Ed25519 is deterministic
    assert f"TEXT ({len(fields.text())} bytes" in doc


def test_ticket_tampered_text_refused() -> None:
    text_b64, sig_b64 = _sign().split(".")
    text = base64.b64decode(text_b64).replace(b"uid=40001", b"uid=40000")
    with pytest.raises(TicketBadSignature):
        _verify(base64.b64encode(text).decode() + "." + sig_b64)


def test_ticket_tampered_signature_refused() -> None:
    text_b64, sig_b64 = _sign().split(".")
    signature = bytearray(base64.b64decode(sig_b64))
    signature[10] ^= 1
    with pytest.raises(TicketBadSignature):
        _verify(text_b64 + "." + base64.b64encode(bytes(signature)).decode())


def test_ticket_other_key_refused() -> None:
    other = SigningKey.from_private(Ed25519PrivateKey.generate())
    with pytest.raises(TicketBadSignature):
        verify_ticket(_sign(), other.verify_key(), now=NOW, host="wn01.example.org", caller_uid=1)


def test_ticket_wrong_key_id_refused() -> None:
    good = Ticket(
        key_id="0123456789abcdef", host="wn01.example.org", caller_uid=1001, user="u",
        uid=5, gid=5, sgids=(), subject="/CN=x", not_before=NOW, not_after=NOW + 60,
        nonce="0" * 32,
    )  # fmt: skip
    with pytest.raises(TicketWrongKey):
        _verify(_resign(good.text()))


def test_ticket_expiry_window() -> None:
    ticket = _sign()
    assert _verify(ticket, now=NOW - 30).uid == 40001
    assert _verify(ticket, now=NOW + 119).uid == 40001
    with pytest.raises(TicketExpired):
        _verify(ticket, now=NOW + 120)
    with pytest.raises(TicketNotYetValid):
        _verify(ticket, now=NOW - 31)


def test_ticket_wrong_host_refused() -> None:
    with pytest.raises(TicketWrongHost):
        _verify(_sign(), host="wn02.example.org")


def test_ticket_wrong_caller_uid_refused() -> None:
    with pytest.raises(TicketWrongCaller):
        _verify(_sign(), caller_uid=1002)


@pytest.mark.parametrize(("lifetime", "backdate"), [(271, 30), (301, 0), (0, 30), (120, -1)])
def test_ticket_validity_over_300s_refused_at_signing(lifetime: int, backdate: int) -> None:
    with pytest.raises(TicketParameterError):
        _sign(lifetime=lifetime, backdate=backdate)


def test_ticket_validity_of_exactly_300s_allowed() -> None:
    fields = _verify(_sign(lifetime=270, backdate=30))
    assert fields.not_after - fields.not_before == 300


@pytest.mark.parametrize(
    "overrides",
    [
        {"uid": 0},
        {"gid": 0},
        {"sgids": (4001, 0)},
        {"subject": "/CN=a\nnot_after=9999999999"},
        {"subject": "CN=no slash"},
        {"user": "-rf"},
        {"user": "a" * 33},
        {"host": "wn01.example.org\n"},
        {"sgids": tuple(range(1, 66))},
        {"uid": 4294967295},
        {"nonce": "xyz"},
    ],
)
def test_ticket_bad_fields_refused_at_signing(overrides: dict[str, object]) -> None:
    with pytest.raises(TicketParameterError):
        _sign(**overrides)


def test_ticket_non_ascii_subject_is_raw_utf8() -> None:
    subject = "/DC=org/DC=example/O=Users/CN=Jürgen Müller"
    ticket = _sign(subject=subject)
    assert "subject=/DC=org/DC=example/O=Users/CN=Jürgen Müller\n".encode() in base64.b64decode(
        ticket.split(".")[0]
    )
    assert _verify(ticket).subject == subject


def _text(**changes: str) -> bytes:
    lines = _verify(_sign()).text().decode().splitlines()
    out = []
    for line in lines:
        key = line.split("=", 1)[0]
        out.append(f"{key}={changes[key]}" if key in changes else line)
    return ("\n".join(out) + "\n").encode()


@pytest.mark.parametrize(
    "text",
    [
        _text(uid="040001"),
        _text(uid="+40001"),
        _text(sgids="4001, 4002"),
        _text(version="2"),
        _text().replace(b"\n", b"\r\n"),
        _text().rstrip(b"\n"),
        _text() + b"extra=1\n",
        _text().replace(b"user=", b"User="),
        b"\n".join(reversed(_text().rstrip(b"\n").split(b"\n"))) + b"\n",
        _text(not_after=str(NOW + 400)),
        _text(not_after=str(NOW - 100)),
    ],
)
def test_ticket_strict_parser_refuses_signed_but_noncanonical_text(text: bytes) -> None:
    with pytest.raises(TicketMalformed):
        _verify(_resign(text))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", ".."),
        lambda t: t.split(".")[0],
        lambda t: t + "\n",
        lambda t: t.replace(".", "\n."),
        lambda t: t.rstrip("="),
        lambda t: "x" * 9000,
        lambda t: t.split(".")[0] + "." + base64.b64encode(b"short").decode(),
    ],
)
def test_ticket_malformed_wire_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TicketMalformed):
        _verify(mangle(_sign()))


def test_keygen_modes_and_public_line(tmp_path: Path) -> None:
    private, public, line = keygen(tmp_path)
    assert private == tmp_path / "scas_ticket_ed25519.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert public.read_text() == line + "\n"
    assert line.startswith("scas_ticket_key = ed25519:")
    key = SigningKey.from_file(private)
    assert parse_public_key(line).key_id == key.key_id
    ticket = sign_ticket(
        key, host="h", caller_uid=1, user="u", uid=5, gid=5, subject="/CN=x", now=NOW
    )
    assert verify_ticket(ticket, line, now=NOW, host="h", caller_uid=1).uid == 5


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "k.key"
    keygen(target)
    before = target.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        keygen(target)
    assert target.read_bytes() == before


def test_keygen_existing_pub_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "k.key.pub").write_text("old\n")
    with pytest.raises(KeyFileError):
        keygen(tmp_path / "k.key")
    assert not (tmp_path / "k.key").exists()
    assert (tmp_path / "k.key.pub").read_text() == "old\n"


def test_keygen_refuses_symlink(tmp_path: Path) -> None:
    (tmp_path / "k.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeyFileError):
        keygen(tmp_path / "k.key")
    assert not (tmp_path / "elsewhere").exists()


def test_keygen_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_keygen([str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("scas_ticket_key = ed25519:") and out.out.count("\n") == 1
    assert cmd_keygen([str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cmd_keygen([str(tmp_path / "missing-dir" / "k.key")]) == 1


def test_signing_key_refuses_readable_file(tmp_path: Path) -> None:
    private, _, _ = keygen(tmp_path)
    os.chmod(private, 0o640)
    with pytest.raises(KeyFileError, match="0600"):
        SigningKey.from_file(private)


def test_public_key_line_with_wrong_id_refused() -> None:
    tampered = PUB.line().replace(PUB.key_id, "0" * 16)
    with pytest.raises(KeyFileError, match="key id"):
        parse_public_key(tampered)


def test_keygen_via_scas_admin(tmp_path: Path) -> None:
    admin = Path(sys.executable).with_name("scas-admin")
    first = subprocess.run([admin, "keygen", tmp_path], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert parse_public_key(first.stdout).key_id == SigningKey.from_file(
        tmp_path / "scas_ticket_ed25519.key"
    ).key_id
    again = subprocess.run([admin, "keygen", tmp_path], capture_output=True, text=True)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
