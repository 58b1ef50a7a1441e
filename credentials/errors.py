"""One exception class per way a credential can be bad.

Every message is one line, safe to put in a log or an XACML status message:
it names what failed and, where it helps an admin, the subject involved.
Callers that need to tell failures apart catch the class; the wire only
ever sees ``str(exc)``.
"""

from __future__ import annotations

from safetext import one_line


class CredentialError(Exception):
    """Base class: the credential cannot be used. ``reason`` is one line."""

    kind = "invalid"

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


class MalformedCredential(CredentialError):
    """The bytes are not a parseable PEM chain / proxy file."""

    kind = "malformed"


class Expired(CredentialError):
    kind = "expired"


class NotYetValid(CredentialError):
    kind = "not-yet-valid"


class UntrustedIssuer(CredentialError):
    """The chain does not end at a CA in the trusted directory, or a signature is wrong."""

    kind = "untrusted"


class Revoked(CredentialError):
    kind = "revoked"


class NotAProxy(CredentialError):
    """A certificate that should be a proxy is not one (or breaks the proxy naming rule)."""

    kind = "not-a-proxy"


class PathLengthExceeded(CredentialError):
    kind = "path-length"


class LimitedProxyRefused(CredentialError):
    kind = "limited-proxy"


class LifetimeExceeded(CredentialError):
    """A proxy level lives longer than the site allows (verify_proxy --max-proxy-level-ttl)."""

    kind = "lifetime"


class ACInvalid(CredentialError):
    """Base for VOMS attribute-certificate failures."""

    kind = "ac-invalid"


class ACMalformed(ACInvalid):
    kind = "ac-malformed"


class ACExpired(ACInvalid):
    kind = "ac-expired"


class ACNotYetValid(ACInvalid):
    kind = "ac-not-yet-valid"


class ACUntrusted(ACInvalid):
    """No vomsdir entry (.lsc or certificate) vouches for the AC's signer."""

    kind = "ac-untrusted"


class ACSignatureInvalid(ACInvalid):
    """The AC's signature does not verify: forged or corrupted."""

    kind = "ac-forged"


class ACHolderMismatch(ACInvalid):
    """The AC was issued to another certificate than this proxy's end-entity."""

    kind = "ac-holder"
