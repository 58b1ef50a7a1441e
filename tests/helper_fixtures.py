"""Test tooling for the glexec setuid helper (root only).

- Version-2 mapping tickets signed here with `cryptography` (docs/ticket.md, plus the
  `proxy_sha256` line), independent of the server code; version 1 on request.
- `leaf_sha256(pem)`: the ticket's `proxy_sha256` for a proxy file's leaf certificate.
- Throw-away Unix accounts marked with a GECOS comment, so a crashed run's leftovers (and only
  those) are removed by the next run.
- `suid_dir()`: a fresh directory, traversable by everyone, on a filesystem that is not mounted
  nosuid (checked in /proc/self/mountinfo), where a setuid-root binary really runs as root.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MARK = "scas-stack setuid helper test account"
KEYS_V2 = (
    "version", "key_id", "host", "caller_uid", "user", "uid", "gid",
    "sgids", "subject", "not_before", "not_after", "nonce", "proxy_sha256",
)  # fmt: skip


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def key_id(key: Ed25519PrivateKey) -> str:
    """First 8 bytes of SHA-256 over the raw public key, lowercase hex."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def key_line(key: Ed25519PrivateKey) -> str:
    """The value of `scas_ticket_key` in glexec.conf."""
    return f"ed25519:{key_id(key)}:{base64.b64encode(raw_public(key)).decode()}"


def leaf_sha256(pem: bytes) -> str:
    """SHA-256 of the DER of the first certificate in a proxy file (its leaf)."""
    leaf = x509.load_pem_x509_certificates(pem)[0]
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def ticket_text(fields: dict[str, object]) -> bytes:
    """The signed text: `key=value` LF-terminated lines in the fixed order.

    Version 1 has no `proxy_sha256` line; `sgids` may be a sequence of ints.
    """
    keys = KEYS_V2 if str(fields["version"]) != "1" else KEYS_V2[:-1]
    out = []
    for k in keys:
        value = fields[k]
        if k == "sgids" and not isinstance(value, str):
            value = ",".join(str(g) for g in value)  # type: ignore[attr-defined]
        out.append(f"{k}={value}\n")
    return "".join(out).encode("utf-8")


def sign(key: Ed25519PrivateKey, fields: dict[str, object]) -> str:
    """The wire form: base64(text) "." base64(Ed25519 signature over text)."""
    text = ticket_text(fields)
    signature = key.sign(text)
    return f"{base64.b64encode(text).decode()}.{base64.b64encode(signature).decode()}"


def ticket_fields(
    key: Ed25519PrivateKey, *, host: str, caller_uid: int, user: str, uid: int, gid: int,
    sgids: Sequence[int], proxy_sha256: str, subject: str = "/DC=org/DC=example/CN=Jane Doe",
    lifetime: int = 120, backdate: int = 30, now: float | None = None,
) -> dict[str, object]:
    start = int(now if now is not None else time.time())
    return {
        "version": 2, "key_id": key_id(key), "host": host, "caller_uid": caller_uid,
        "user": user, "uid": uid, "gid": gid, "sgids": list(sgids), "subject": subject,
        "not_before": start - backdate, "not_after": start + lifetime,
        "nonce": secrets.token_hex(16), "proxy_sha256": proxy_sha256,
    }  # fmt: skip


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_options(path: str | os.PathLike[str]) -> set[str]:
    """Per-mount options of the mount holding `path` (from /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    best, options = "", set()
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            mount_point = _unescape(fields[4])
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, options = mount_point, set(fields[5].split(","))
    return options


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def suid_dir(candidates: Sequence[str | os.PathLike[str]]) -> tuple[Path | None, str]:
    """A new root-owned 0755 directory under the first candidate that allows setuid binaries.

    Returns (directory, "") or (None, the reasons every candidate was refused).
    """
    refused = []
    for candidate in candidates:
        base = Path(candidate)
        if not base.is_dir():
            refused.append(f"{base}: not a directory")
            continue
        if "nosuid" in mount_options(base):
            refused.append(f"{base}: mounted nosuid")
            continue
        made = Path(tempfile.mkdtemp(prefix="glexec-helper-", dir=base))
        os.chmod(made, 0o755)
        if not _world_traversable(made):
            os.rmdir(made)
            refused.append(f"{base}: not traversable by other users")
            continue
        return made, ""
    return None, "; ".join(refused)


def _ours(name: str) -> bool | None:
    """True: our leftover account; False: someone else's; None: no such account."""
    try:
        return pwd.getpwnam(name).pw_gecos == MARK
    except KeyError:
        return None


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _remove(users: Sequence[str], groups: Sequence[str]) -> None:
    for name in users:
        subprocess.run(["userdel", name], capture_output=True)
    for name in [*users, *groups]:
        subprocess.run(["groupdel", name], capture_output=True)


@contextmanager
def throwaway_accounts(users: Sequence[str], groups: Sequence[str] = ()) -> Iterator[str]:
    """Create the accounts (each with its own group) and the extra groups; remove them after.

    Yields "" on success, or the reason they could not be made (someone else's account of
    that name exists, or useradd failed).
    """
    foreign = [u for u in users if _ours(u) is False]
    if foreign:
        yield f"accounts {foreign} exist and are not this test's"
        return
    _remove([u for u in users if _ours(u)], groups)
    try:
        for group in groups:
            _run("groupadd", group)
        for name in users:
            _run("useradd", "-M", "-U", "-s", "/usr/sbin/nologin", "-c", MARK, name)
    except subprocess.CalledProcessError as exc:
        _remove(users, groups)
        yield f"useradd/groupadd failed: {exc.stderr.decode(errors='replace').strip()}"
        return
    try:
        yield ""
    finally:
        _remove(users, groups)
