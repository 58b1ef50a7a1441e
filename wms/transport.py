"""The user's side of the wire: HTTPS to the CE with the user's proxy as client certificate.

Standard library only (ssl, http.client). The proxy file (``X509_USER_PROXY``: certificate,
key, chain) is the TLS identity; the CE's certificate must chain to ``X509_CERT_DIR`` (else
``/etc/grid-security/certificates``) and match the host name in the URL.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CeClient", "Reply", "TransportError"]

DEFAULT_CERTDIR = "/etc/grid-security/certificates"


class TransportError(Exception):
    """The CE could not be reached or answered garbage (exit 2: try again)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except ValueError:
            raise TransportError(f"the CE answered HTTP {self.status} without JSON: "
                                 f"{self.body[:120]!r}") from None  # fmt: skip
        if not isinstance(doc, dict):
            raise TransportError(f"the CE answered HTTP {self.status} with unexpected JSON")
        return doc


class CeClient:
    """One CE base URL (``https://host:port``), the proxy, the CA directory."""

    def __init__(self, base_url: str, proxy: str, certdir: str | None = None,
                 timeout: float = 330.0) -> None:  # fmt: skip
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise TransportError(f"{base_url}: the CE URL must be https://host[:port]")
        self.base = f"https://{parts.netloc}"
        self.host, self.port = parts.hostname, parts.port or 443
        self.timeout = timeout
        certdir = certdir or os.environ.get("X509_CERT_DIR") or DEFAULT_CERTDIR
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(capath=certdir)
            ctx.load_cert_chain(proxy)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise TransportError(f"cannot use proxy {proxy} / CA directory {certdir}: "
                                 f"{reason}") from None  # fmt: skip
        self.ctx = ctx
        self._conn: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:  # fmt: skip
        """One request on a kept connection (reopened once if the CE closed it)."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                         timeout=self.timeout)  # fmt: skip
            try:
                self._conn.request(method, path, body=body, headers=dict(headers or {}))
                resp = self._conn.getresponse()
                data = resp.read()
                return Reply(resp.status, data, {k.lower(): v for k, v in resp.getheaders()})
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2 or (body is not None and method == "POST" and path == "/jobs"):
                    raise TransportError(f"{self.base}: connection closed by the CE") from None
            except ssl.SSLError as exc:
                self.close()
                raise TransportError(f"{self.base}: TLS: {exc.reason or exc}") from None
            except OSError as exc:
                self.close()
                raise TransportError(f"{self.base}: {exc.strerror or exc}") from None
        raise TransportError(f"{self.base}: no answer")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def multipart(fields: Mapping[str, str], files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = "wms-" + secrets.token_hex(16)
    out = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                   f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode()
                   + value.encode("utf-8") + b"\r\n")  # fmt: skip
    for name, data in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{name}.tar"\r\nContent-Type: application/x-tar\r\n\r\n'.encode()
                   + data + b"\r\n")  # fmt: skip
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"
