"""The signed glexec mapping ticket (scas_server/ticket.py, docs/ticket.md)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scas_server.ticket import (
    KEYS,
    VERSION,
    KeyFileError,
    SigningKey,
    Ticket,
    TicketBadSignature,
    TicketExpired,
    TicketMalformed,
    TicketNotYetValid,
    TicketParameterError,
    TicketUnsupportedVersion,
    TicketWrongCaller,
    TicketWrongHost,
    TicketWrongKey,
    TicketWrongProxy,
    cmd_keygen,
    keygen,
    leaf_sha256,
    parse_public_key,
    proof_of_possession,
    sign_ticket,
    verify_ticket,
)
from testkit.pki import TestPKI

DOC = Path(__file__).parent.parent / "docs" / "ticket.md"
NOW = 1795331954
KEY = SigningKey.from_private(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
PUB = KEY.verify_key()
JANE = "/DC=org/DC=example/OU=People/CN=Jane Doe 12345"
LEAF = hashlib.sha256(b"example leaf certificate").hexdigest()
#: the worked example of format version 1 (docs/ticket.md before version 2): validly signed
#: with the test key, for caller uid 1001 on wn01.example.org at 1795331954
V1_EXAMPLE = (
    "dmVyc2lvbj0xCmtleV9pZD01NjQ3NWFhNzU0NjM0NzRjCmhvc3Q9d24wMS5leGFtcGxlLm9yZwpjYWxsZXJfdWlk"
    "PTEwMDEKdXNlcj1kdGVhbTAwMQp1aWQ9NDAwMDEKZ2lkPTQwMDAKc2dpZHM9NDAwMSw0MDAyCnN1YmplY3Q9L0RD"
    "PW9yZy9EQz1leGFtcGxlL09VPVBlb3BsZS9DTj1KYW5lIERvZSAxMjM0NQpub3RfYmVmb3JlPTE3OTUzMzE5MjQK"
    "bm90X2FmdGVyPTE3OTUzMzIwNzQKbm9uY2U9MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmYK"
    ".KWqUlT1XJDXWrKXVNfSUHyoLH91hqMVibMopghxXFuHAvbGibQBOZS2b3k/B/iFMBa/9+Gv8uvDyFR6GkR+qAg=="
)


def _sign(**overrides: object) -> str:
    args: dict[str, object] = {
        "host": "wn01.example.org",
        "caller_uid": 1001,
        "user": "dteam001",
        "uid": 40001,
        "gid": 4000,
        "sgids": (4001, 4002),
        "subject": JANE,
        "proxy_sha256": LEAF,
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
    assert fields.version == VERSION == 2 and fields.proxy_sha256 == LEAF


def test_ticket_v2_text_layout_is_v1_plus_proxy_sha256() -> None:
    """The exact layout the C helper parses: the twelve v1 keys in order, then proxy_sha256."""
    lines = _verify(_sign()).text().decode().split("\n")
    assert lines[-1] == "" and len(lines) == 14
    assert [line.split("=", 1)[0] for line in lines[:-1]] == [
        "version", "key_id", "host", "caller_uid", "user", "uid", "gid",
        "sgids", "subject", "not_before", "not_after", "nonce", "proxy_sha256",
    ]  # fmt: skip
    assert list(KEYS) == [line.split("=", 1)[0] for line in lines[:-1]]
    assert lines[0] == "version=2" and lines[12] == f"proxy_sha256={LEAF}"


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
    now, host = 1800000000, "wn02.example.org"
    assert "signed at epoch 1800000000 (2027-01-15T08:00:00Z)" in doc
    assert datetime.fromtimestamp(now, UTC).isoformat() == "2027-01-15T08:00:00+00:00"
    fields = verify_ticket(
        ticket, line.group(0), now=now, host=host, caller_uid=1002, proxy_sha256=LEAF
    )
    text_block = re.search(r"^```\n(version=2\n.*?)```$", doc, re.M | re.S)
    assert text_block is not None
    text = text_block.group(1).encode()
    assert base64.b64decode(ticket.split(".")[0]) == text
    assert fields.text() == text
    assert f"TEXT ({len(text)} bytes" in doc
    assert "SHA-256 of the 24 ASCII bytes `example leaf certificate`" in doc
    assert len(b"example leaf certificate") == 24
    # the signature is the documented key's over exactly TEXT (Ed25519 is deterministic)
    assert base64.b64decode(ticket.split(".")[1]) == KEY.private_key.sign(text)
    again = sign_ticket(
        KEY, host=host, caller_uid=1002, user="dteam002", uid=40002, gid=4000,
        sgids=(4001, 4002), subject=JANE, proxy_sha256=LEAF, now=now,
        nonce="ffeeddccbbaa99887766554433221100",
    )  # fmt: skip
    assert again == ticket
    assert "It verifies for `now` in [1799999970, 1800000120)" in doc
    with pytest.raises(TicketExpired):
        verify_ticket(ticket, PUB, now=1800000120, host=host, caller_uid=1002)
    with pytest.raises(TicketWrongProxy):
        verify_ticket(ticket, PUB, now=now, host=host, caller_uid=1002, proxy_sha256="0" * 64)


def test_ticket_version_1_refused_with_clear_reason() -> None:
    """The old v1 example is correctly signed and in its window, and still refused."""
    wn01 = {"host": "wn01.example.org", "caller_uid": 1001}
    with pytest.raises(TicketUnsupportedVersion, match="version 1 is refused"):
        verify_ticket(V1_EXAMPLE, PUB, now=1795331954, **wn01)  # type: ignore[arg-type]
    v1 = b"".join(line + b"\n" for line in _text(version="1").split(b"\n")[:12])
    assert v1.count(b"\n") == 12 and b"proxy_sha256" not in v1
    with pytest.raises(TicketUnsupportedVersion, match="version 1 is refused"):
        _verify(_resign(v1))
    with pytest.raises(TicketUnsupportedVersion, match="version 1 is refused"):
        _verify(_resign(_text(version="1")))  # v1 with a 13th line is no better
    with pytest.raises(TicketUnsupportedVersion, match="only 2 is accepted"):
        _verify(_resign(_text(version="3")))
    assert issubclass(TicketUnsupportedVersion, TicketMalformed)


def test_ticket_signer_issues_only_v2() -> None:
    with pytest.raises(TypeError, match="proxy_sha256"):  # no ticket without the binding
        sign_ticket(  # type: ignore[call-arg]
            KEY, host="h", caller_uid=1, user="u", uid=5, gid=5, subject="/CN=x", now=NOW
        )
    assert base64.b64decode(_sign().split(".")[0]).startswith(b"version=2\n")


@pytest.fixture(scope="module")
def ticket_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("ticket-pki"), reuse_keys=True)


def test_ticket_proof_of_possession(ticket_pki: TestPKI) -> None:
    """The helper's check: the proxy's key matches its leaf, whose hash is proxy_sha256."""
    user = ticket_pki.user("pop", "/DC=org/DC=example/O=Users/CN=Pop User")
    path = ticket_pki.proxy(user, fqans=["/dteam"])
    pem = Path(path).read_bytes()
    leaf = x509.load_pem_x509_certificates(pem)[0]
    digest = proof_of_possession(pem)
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert digest == leaf_sha256(leaf) == leaf_sha256(der) == hashlib.sha256(der).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    ticket = _sign(proxy_sha256=digest)
    assert _verify(ticket, proxy_sha256=digest).proxy_sha256 == digest
    other = proof_of_possession(Path(ticket_pki.proxy(user)).read_bytes())
    with pytest.raises(TicketWrongProxy):
        _verify(ticket, proxy_sha256=other)
    # the public chain alone (what anyone can see) proves nothing
    certs = x509.load_pem_x509_certificates(pem)
    chain_only = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    with pytest.raises(TicketWrongProxy, match="no private key"):
        proof_of_possession(chain_only)
    # a key that is not the leaf's: refused
    stranger = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )  # fmt: skip
    leaf_end = chain_only.index(b"-----END CERTIFICATE-----\n") + 26
    swapped = chain_only[:leaf_end] + stranger + chain_only[leaf_end:]
    with pytest.raises(TicketWrongProxy, match="does not match"):
        proof_of_possession(swapped)
    with pytest.raises(TicketWrongProxy):
        proof_of_possession(b"not pem")


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
        nonce="0" * 32, proxy_sha256=LEAF,
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
        {"caller_uid": -1},
        {"caller_uid": 4294967295},
        {"nonce": "xyz"},
        {"nonce": "0" * 31},
        {"nonce": "A" * 32},
        {"proxy_sha256": ""},
        {"proxy_sha256": LEAF[:-1]},
        {"proxy_sha256": LEAF + "0"},
        {"proxy_sha256": LEAF.upper()},
        {"proxy_sha256": "g" * 64},
        {"host": ""},
        {"host": "-wn.example.org"},
        {"host": "wn_01.example.org"},
        {"subject": "/CN=" + "x" * 1021},
        {"subject": "/CN=del\x7f"},
        {"user": ""},
        {"user": "a b"},
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
        _text(version="02"),
        _text(version=""),
        _text(key_id="56475AA75463474C"),
        _text(key_id="56475aa75463474"),
        _text(host="WN01.example.org"),
        _text(host="wn01.example.org."),
        _text(caller_uid="-1"),
        _text(caller_uid="4294967295"),
        _text(caller_uid=" 1001"),
        _text(user="dteam 001"),
        _text(uid="99999999999"),
        _text(gid="4000 "),
        _text(sgids="4001,"),
        _text(sgids=",4001"),
        _text(sgids=",".join(["4001"] * 65)),
        _text(subject="CN=x"),
        _text(subject=""),
        _text(not_before="01795331924"),
        _text(not_before="1" * 13),
        _text(not_after="-1"),
        _text(nonce="0" * 33),
        _text(nonce="G" * 32),
        _text(proxy_sha256=LEAF.upper()),
        _text(proxy_sha256=LEAF[:63]),
        _text(proxy_sha256=LEAF + "00"),
        _text(proxy_sha256=""),
        _text(proxy_sha256=" " + LEAF),
        b"".join(line + b"\n" for line in _text().split(b"\n")[:12]),  # v2 without line 13
        _text() + b"\n",
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
def test_ticket_malformed_wire_refused(mangle: Callable[[str], str]) -> None:
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
        key, host="h", caller_uid=1, user="u", uid=5, gid=5, subject="/CN=x",
        proxy_sha256=LEAF, now=NOW,
    )  # fmt: skip
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
