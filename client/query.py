"""A decision query from a payload credential: a typed front of `xacml.build_request`.

In:  the payload's PEM chain (a proxy file is fine: its private key is dropped, never sent),
     its FQANs, the resource type and action, this host's name, the pilot's DN, and the
     obligations this PEP can fulfil.
Out: a `Query`: the SOAP bytes and the request ID the reply must answer (InResponseTo).

The server takes the identity and the FQANs from the verified chain and its VOMS ACs; the
FQANs and subject DN sent here are what the PEP believes, logged by the server as claimed.
"""

from __future__ import annotations

import re  # loaded anyway: base64 and ssl import it
import socket

from client import xacml_ids as ids
from client.failures import ClientConfigError
from client.xacml_text import build_request, new_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NamedTuple

    class _QueryFields(NamedTuple):
        body: bytes
        request_id: str
else:
    from collections import namedtuple

    _QueryFields = namedtuple("_QueryFields", "body request_id")

RESOURCE_TYPES = ("wn", "ce", "se")
ACTIONS = ("execute-now", "queue", "access")
#: a credential file larger than this is not a certificate chain
MAX_CHAIN_FILE = 1 << 20
_CERT_PEM = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----"
)


class Query(_QueryFields):
    """The bytes to POST and the ID the reply must carry in InResponseTo."""

    __slots__ = ()


def certificates(pem: bytes) -> bytes:
    """Only the CERTIFICATE blocks of `pem`, in order, one per line group.

    A proxy file holds its private key between the certificates: that must never leave
    the host, so everything but the certificates is dropped.
    """
    blocks = _CERT_PEM.findall(pem)
    return b"".join(block.replace(b"\r\n", b"\n") + b"\n" for block in blocks)


def read_chain(path: str) -> bytes:
    """The certificate chain in file `path` (a proxy, or a cert + chain), keys left out.

    Raises ClientConfigError when the file cannot be read or holds no certificate.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CHAIN_FILE + 1)
    except OSError as exc:
        raise ClientConfigError(f"cannot read credential {path}: {exc.strerror}") from None
    if len(data) > MAX_CHAIN_FILE:
        raise ClientConfigError(f"credential {path}: larger than {MAX_CHAIN_FILE} bytes")
    chain = certificates(data)
    if not chain:
        raise ClientConfigError(f"credential {path}: no PEM certificate in it")
    return chain


def _short_or_uri(value: str, allowed: Sequence[str], what: str) -> str:
    if value in allowed or ":" in value:
        return value
    raise ClientConfigError(f"unknown {what} {value!r} (expected one of {', '.join(allowed)})")


def build_query(
    chain: bytes,
    *,
    fqans: Sequence[str] = (),
    resource_type: str = "wn",
    action: str = "execute-now",
    host: str | None = None,
    pilot_dn: str | None = None,
    obligations: Sequence[str] = ids.MAPPING_OBLIGATIONS,
    subject_dn: str | None = None,
    pep_dn: str | None = None,
    request_id: str | None = None,
    caller_uid: int | None = None,
) -> Query:
    """The query for one payload. `chain` is PEM (keys in it are dropped).

    `resource_type`/`action` take the short names (wn/ce/se, execute-now/queue/access) or
    full URIs. `host` defaults to this host's name. `obligations` lists what this PEP can
    enforce (uidgid, secondary-gids, username by default; add ``ids.OBLIG_TICKET`` for a
    glexec mapping ticket). `caller_uid` states the uid the ticket is for (the server
    checks it against the kernel's on the Unix socket).
    """
    certs = certificates(chain)
    if not certs:
        raise ClientConfigError("the payload credential holds no PEM certificate")
    rid = request_id or new_id()
    try:
        body = build_request(
            subject_dn=subject_dn,
            cert_chain=certs,
            fqans=tuple(fqans),
            resource=_short_or_uri(resource_type, RESOURCE_TYPES, "resource type"),
            action=_short_or_uri(action, ACTIONS, "action"),
            host=host if host is not None else socket.gethostname(),
            pep_dn=pep_dn,
            oblig_supported=tuple(obligations),
            pilot_dn=pilot_dn,
            request_id=rid,
            return_context=False,
            caller_uid=caller_uid,
        )
    except ValueError as exc:  # control characters in a DN or FQAN
        raise ClientConfigError(f"cannot build the query: {exc}") from None
    return Query(body, rid)
