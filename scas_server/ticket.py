"""The glexec mapping ticket: a short signed statement "caller X on host H, holding the key of
proxy P, may become user U".

The setuid helper trusts nothing its caller says, only this ticket (DESIGN.md §6). The format
(docs/ticket.md is the byte-level contract the C verifier implements) is deliberately dull:
thirteen `key=value` lines in a fixed order, decimal numbers, epoch seconds, no escaping; the
wire form is base64(text) "." base64(Ed25519 signature over exactly those text bytes).
Version 2 (the only one issued or accepted) binds the ticket to the payload proxy SCAS
verified: `proxy_sha256` is the SHA-256 of its leaf certificate's DER, and the helper checks
that the caller holds that leaf's private key (proof of possession).
`verify_ticket` is the reference verifier and `proof_of_possession` the reference for the
key check; the C helper must accept and refuse the same tickets (it additionally burns the
nonce so a ticket works once).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from credentials.credential import load_pem
from credentials.errors import CredentialError

VERSION = 2
MAX_VALIDITY = 300  # seconds from not_before to not_after, enforced by signer and verifiers
MAX_SGIDS = 64
MAX_TEXT = 4096
MAX_WIRE = 8192
KEYS = (
    "version", "key_id", "host", "caller_uid", "user", "uid", "gid",
    "sgids", "subject", "not_before", "not_after", "nonce", "proxy_sha256",
)  # fmt: skip
KEY_FILE_NAME = "scas_ticket_ed25519.key"
CONF_KEY = "scas_ticket_key"

_DEC = re.compile(r"0|[1-9][0-9]{0,9}")
_EPOCH = re.compile(r"0|[1-9][0-9]{0,11}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_SGIDS = re.compile(r"(?:(?:0|[1-9][0-9]{0,9})(?:,(?:0|[1-9][0-9]{0,9})){0,63})?")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
MAX_ID = 4294967294  # (uid_t)-1 is "no change" to setresuid: never a valid target


class TicketError(Exception):
    """Base class; `reason` is one line."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class TicketParameterError(TicketError, ValueError):
    """sign_ticket was asked for something the format or the policy forbids."""


class TicketMalformed(TicketError):
    """Not a ticket: bad base64, bad line structure, bad value syntax."""


class TicketUnsupportedVersion(TicketMalformed):
    """A correctly signed ticket of another format version (version 1 has no proxy binding)."""


class TicketBadSignature(TicketError):
    """The signature does not verify with the configured key."""


class TicketWrongKey(TicketError):
    """The ticket names a key id other than the configured key's."""


class TicketExpired(TicketError):
    """now >= not_after."""


class TicketNotYetValid(TicketError):
    """now < not_before."""


class TicketWrongHost(TicketError):
    """Issued for another host."""


class TicketWrongCaller(TicketError):
    """Issued for another calling uid."""


class TicketWrongProxy(TicketError):
    """The presented proxy is not the one the ticket was issued for, or its key does not match
    its leaf certificate (no proof of possession)."""


class KeyFileError(TicketError):
    """A key file is missing, insecure, malformed, or would be overwritten."""


@dataclass(frozen=True)
class Ticket:
    """A verified (or about to be signed) ticket's fields."""

    key_id: str
    host: str
    caller_uid: int
    user: str
    uid: int
    gid: int
    sgids: tuple[int, ...]
    subject: str
    not_before: int
    not_after: int
    nonce: str
    proxy_sha256: str
    version: int = VERSION

    def text(self) -> bytes:
        """The canonical text: the exact bytes that are signed."""
        values = {
            "version": str(self.version),
            "key_id": self.key_id,
            "host": self.host,
            "caller_uid": str(self.caller_uid),
            "user": self.user,
            "uid": str(self.uid),
            "gid": str(self.gid),
            "sgids": ",".join(str(g) for g in self.sgids),
            "subject": self.subject,
            "not_before": str(self.not_before),
            "not_after": str(self.not_after),
            "nonce": self.nonce,
            "proxy_sha256": self.proxy_sha256,
        }
        return "".join(f"{k}={values[k]}\n" for k in KEYS).encode("utf-8")


def leaf_sha256(leaf: x509.Certificate | bytes) -> str:
    """`proxy_sha256` of a leaf certificate: SHA-256 of its DER, 64 lowercase hex digits."""
    der = leaf if isinstance(leaf, bytes) else leaf.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def key_id_of(public: Ed25519PublicKey) -> str:
    """First 8 bytes of SHA-256 over the raw 32-byte public key, as 16 lowercase hex digits."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class VerifyKey:
    key_id: str
    public_key: Ed25519PublicKey

    def line(self) -> str:
        """The glexec.conf line: `scas_ticket_key = ed25519:<key id>:<base64 raw key>`."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"{CONF_KEY} = ed25519:{self.key_id}:{base64.b64encode(raw).decode('ascii')}"


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def from_private(cls, private_key: Ed25519PrivateKey) -> SigningKey:
        return cls(key_id_of(private_key.public_key()), private_key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load a PEM (PKCS#8) Ed25519 key that only its owner can read."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise KeyFileError(f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
                raise KeyFileError(f"{path}: must be a regular file with mode 0600 or stricter")
            data = handle.read(16384)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 key")
        return cls.from_private(key)

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.key_id, self.private_key.public_key())


def parse_public_key(text: str) -> VerifyKey:
    """Read `ed25519:<key id>:<base64>`, optionally as a whole `scas_ticket_key = ...` line."""
    value = text.strip()
    if "=" in value.split(":", 1)[0]:
        name, _, value = value.partition("=")
        if name.strip() != CONF_KEY:
            raise KeyFileError(f"expected a {CONF_KEY} line")
        value = value.strip()
    parts = value.split(":")
    if len(parts) != 3 or parts[0] != "ed25519" or not _HEX16.fullmatch(parts[1]):
        raise KeyFileError("public key must look like ed25519:<16 hex>:<base64>")
    try:
        raw = base64.b64decode(parts[2], validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise KeyFileError("public key is not 32 bytes of base64") from None
    if key_id_of(public) != parts[1]:
        raise KeyFileError("public key does not match its key id")
    return VerifyKey(parts[1], public)


def _epoch(now: float | datetime) -> int:
    return int(now.timestamp()) if isinstance(now, datetime) else int(now)


def _check_fields(t: Ticket, error: type[TicketError]) -> None:
    """Value syntax shared by signer and verifier (the C helper applies the same rules)."""
    problems = [
        (t.version == VERSION, "unsupported version"),
        (bool(_HEX16.fullmatch(t.key_id)), "key_id must be 16 lowercase hex digits"),
        (bool(_HOST.fullmatch(t.host)), "host must be a lower-case DNS name"),
        (bool(_USER.fullmatch(t.user)), "user must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"),
        (len(t.sgids) <= MAX_SGIDS, f"at most {MAX_SGIDS} secondary gids"),
        (all(0 <= i <= MAX_ID for i in (t.caller_uid, t.uid, t.gid, *t.sgids)), "id out of range"),
        (t.subject.startswith("/") and len(t.subject.encode()) <= 1024, "subject must be a /DN"),
        (not any(ord(c) < 0x20 or ord(c) == 0x7F for c in t.subject), "control char in subject"),
        (0 <= t.not_before < t.not_after, "not_after must follow not_before"),
        (t.not_after - t.not_before <= MAX_VALIDITY, f"validity exceeds {MAX_VALIDITY} s"),
        (bool(_NONCE.fullmatch(t.nonce)), "nonce must be 32 lowercase hex digits"),
        (bool(_SHA256.fullmatch(t.proxy_sha256)), "proxy_sha256 must be 64 lowercase hex digits"),
    ]
    for ok, reason in problems:
        if not ok:
            raise error(reason)


def sign_ticket(
    key: SigningKey,
    *,
    host: str,
    caller_uid: int,
    user: str,
    uid: int,
    gid: int,
    sgids: Sequence[int] = (),
    subject: str,
    proxy_sha256: str,
    now: float | datetime,
    lifetime: int = 120,
    backdate: int = 30,
    nonce: str | None = None,
) -> str:
    """A signed version-2 ticket, valid from now-`backdate` (clock skew) to now+`lifetime`.

    `proxy_sha256` is `leaf_sha256` of the leaf certificate of the payload chain SCAS verified.
    Refuses (TicketParameterError) a total validity above 300 s and root as target uid or gid.
    """
    if lifetime <= 0 or backdate < 0 or lifetime + backdate > MAX_VALIDITY:
        raise TicketParameterError(f"validity {backdate}+{lifetime} s exceeds {MAX_VALIDITY} s")
    if uid == 0 or gid == 0 or 0 in sgids:
        raise TicketParameterError("a ticket never maps to root (uid or gid 0)")
    start = _epoch(now)
    ticket = Ticket(
        key_id=key.key_id,
        host=host.lower(),
        caller_uid=caller_uid,
        user=user,
        uid=uid,
        gid=gid,
        sgids=tuple(sgids),
        subject=subject,
        not_before=max(0, start - backdate),
        not_after=start + lifetime,
        nonce=nonce or secrets.token_hex(16),
        proxy_sha256=proxy_sha256,
    )
    _check_fields(ticket, TicketParameterError)
    text = ticket.text()
    if len(text) > MAX_TEXT:
        raise TicketParameterError(f"ticket text exceeds {MAX_TEXT} bytes")
    signature = key.private_key.sign(text)
    return f"{base64.b64encode(text).decode()}.{base64.b64encode(signature).decode()}"


def _b64(part: str, what: str) -> bytes:
    if not _B64.fullmatch(part) or len(part) % 4:
        raise TicketMalformed(f"{what} is not canonical base64")
    try:
        return base64.b64decode(part, validate=True)
    except (binascii.Error, ValueError):
        raise TicketMalformed(f"{what} is not canonical base64") from None


def parse_text(text: bytes) -> Ticket:
    """Strictly parse canonical text (no signature check): exact keys, order and syntax."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise TicketMalformed("ticket text is not UTF-8") from None
    if not decoded.endswith("\n") or "\r" in decoded or "\x00" in decoded:
        raise TicketMalformed("ticket text must be LF-terminated lines without CR or NUL")
    lines = decoded[:-1].split("\n")
    # the version first, so an old or future ticket is refused for what it is
    if lines[0] == "version=1":
        raise TicketUnsupportedVersion(
            "ticket format version 1 is refused: it does not bind the payload proxy "
            "(no proxy_sha256); only version 2 is accepted"
        )
    if lines[0] != f"version={VERSION}":
        raise TicketUnsupportedVersion(f"unsupported ticket version; only {VERSION} is accepted")
    if len(lines) != len(KEYS):
        raise TicketMalformed(f"ticket text must have exactly {len(KEYS)} lines")
    values: dict[str, str] = {}
    for expected, line in zip(KEYS, lines, strict=True):
        name, sep, value = line.partition("=")
        if name != expected or not sep:
            raise TicketMalformed(f"expected key {expected!r}")
        values[name] = value
    for name in ("version", "caller_uid", "uid", "gid"):
        if not _DEC.fullmatch(values[name]):
            raise TicketMalformed(f"{name} must be a decimal number")
    for name in ("not_before", "not_after"):
        if not _EPOCH.fullmatch(values[name]):
            raise TicketMalformed(f"{name} must be decimal epoch seconds")
    if not _SGIDS.fullmatch(values["sgids"]):
        raise TicketMalformed("sgids must be comma-separated decimals")
    ticket = Ticket(
        version=int(values["version"]),
        key_id=values["key_id"],
        host=values["host"],
        caller_uid=int(values["caller_uid"]),
        user=values["user"],
        uid=int(values["uid"]),
        gid=int(values["gid"]),
        sgids=tuple(int(g) for g in values["sgids"].split(",") if g),
        subject=values["subject"],
        not_before=int(values["not_before"]),
        not_after=int(values["not_after"]),
        nonce=values["nonce"],
        proxy_sha256=values["proxy_sha256"],
    )
    _check_fields(ticket, TicketMalformed)
    return ticket


def verify_ticket(
    ticket: str,
    public_key: VerifyKey | str,
    *,
    now: float | datetime,
    host: str,
    caller_uid: int,
    proxy_sha256: str | None = None,
) -> Ticket:
    """Check signature, key id, syntax, host, caller uid and validity window; return the fields.

    Order matters and the C helper follows it: size, split, base64, signature, then parse.
    With `proxy_sha256` (from `proof_of_possession` on the presented proxy) the ticket's
    must equal it; the helper always makes that check. Does not burn the nonce (the helper
    does, with O_CREAT|O_EXCL).
    """
    key = parse_public_key(public_key) if isinstance(public_key, str) else public_key
    if len(ticket) > MAX_WIRE:
        raise TicketMalformed(f"ticket longer than {MAX_WIRE} characters")
    parts = ticket.split(".")
    if len(parts) != 2:
        raise TicketMalformed("ticket must be <base64 text>.<base64 signature>")
    text, signature = _b64(parts[0], "text"), _b64(parts[1], "signature")
    if len(signature) != 64 or len(text) > MAX_TEXT:
        raise TicketMalformed("bad signature or text length")
    try:
        key.public_key.verify(signature, text)
    except InvalidSignature:
        raise TicketBadSignature("ticket signature does not verify") from None
    fields = parse_text(text)
    if fields.key_id != key.key_id:
        raise TicketWrongKey(f"ticket is for key {fields.key_id}, configured {key.key_id}")
    if fields.host != host.lower():
        raise TicketWrongHost(f"ticket is for host {fields.host}")
    if fields.caller_uid != caller_uid:
        raise TicketWrongCaller(f"ticket is for caller uid {fields.caller_uid}")
    moment = _epoch(now)
    if moment < fields.not_before:
        raise TicketNotYetValid("ticket is not valid yet")
    if moment >= fields.not_after:
        raise TicketExpired("ticket has expired")
    if proxy_sha256 is not None and not hmac.compare_digest(fields.proxy_sha256, proxy_sha256):
        raise TicketWrongProxy("ticket was issued for another proxy (proxy_sha256 differs)")
    return fields


def proof_of_possession(proxy_pem: bytes) -> str:
    """The presented proxy's `proxy_sha256`, once its private key is shown to match its leaf.

    `proxy_pem` is a proxy file (leaf certificate first, its private key, then the rest of
    the chain). The reference for the helper's check: the file must carry a private key and
    it must be the leaf's (same public key), so whoever presents it holds what the chain SCAS
    verified was issued to. Compare the result with the ticket's `proxy_sha256`.
    """
    try:
        cred = load_pem(proxy_pem, source="proxy")
    except CredentialError as exc:
        raise TicketWrongProxy(exc.reason) from None
    if cred.key is None:
        raise TicketWrongProxy("proxy carries no private key")
    return leaf_sha256(cred.leaf)


def _create(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def keygen(target: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Make a key pair: the private key (0600) and `<key>.pub` holding the glexec.conf line.

    `target` is a directory (files named scas_ticket_ed25519.key[.pub] inside) or the private
    key's path. Never overwrites: refuses if either file exists; on failure nothing is left.
    Returns (private path, public path, public key line).
    """
    path = Path(target)
    private = path / KEY_FILE_NAME if path.is_dir() else path
    public = private.with_name(private.name + ".pub")
    for existing in (private, public):
        if existing.exists() or existing.is_symlink():
            raise KeyFileError(f"{existing} exists; refusing to overwrite")
    signing = SigningKey.from_private(Ed25519PrivateKey.generate())
    pem = signing.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    line = signing.verify_key().line()
    try:
        _create(private, pem, 0o600)
    except OSError as exc:
        raise KeyFileError(f"{private}: {exc.strerror}") from None
    try:
        _create(public, (line + "\n").encode("ascii"), 0o644)
    except OSError as exc:
        private.unlink(missing_ok=True)
        raise KeyFileError(f"{public}: {exc.strerror}") from None
    return private, public, line


def cmd_keygen(argv: Sequence[str]) -> int:
    """`scas-admin keygen PATH`: 0 on success (the glexec.conf line on stdout), 1 on error."""
    parser = argparse.ArgumentParser(
        prog="scas-admin keygen",
        description="Create the Ed25519 key pair that signs glexec mapping tickets.",
    )
    parser.add_argument("path", help="directory, or the private key file to create")
    args = parser.parse_args(list(argv))
    try:
        private, public, line = keygen(args.path)
    except KeyFileError as exc:
        print(f"scas-admin keygen: {exc.reason}", file=sys.stderr)
        return 1
    print(f"# private key: {private} (mode 0600); public line in {public}", file=sys.stderr)
    print("# add to the [glexec] section of glexec.conf on every worker node:", file=sys.stderr)
    print(line)
    return 0
