"""GACL access lists for lcas_voms.mod (``/etc/lcas/lcas_voms.gacl.in`` style).

::

    <gacl version="0.0.1">
      <entry>
        <voms><vo>dteam</vo><group>/dteam/prod</group><role>admin</role></voms>
        <allow><exec/></allow>
      </entry>
      <entry><person><dn>/DC=org/CN=Alice</dn></person><allow><exec/></allow></entry>
    </gacl>

Rules (GridSite GACL, reduced to what LCAS needs):

* an entry applies when ALL its credentials match; a credential is
  ``<voms>`` (or the older ``<voms-cred>``) holding any of ``<vo>``,
  ``<group>``, ``<role>``, ``<capability>``, ``<fqan>`` -- each given one must
  match the same FQAN of the user -- or ``<person><dn>`` (only used with
  ``-use_user_dn``), or ``<any-user/>``. Inside ``<voms-cred>`` a text-only
  ``<voms>`` names the VOMS server: it must equal the subject of the AC that
  carried the FQAN, so without a verified credential such an entry never
  applies. An unknown credential type never matches;
* values are glob patterns (``*``, ``?``, ``[...]``, case-sensitive); a group
  without a leading ``/`` gets one (``iteam`` = ``/iteam``); ``<role>NULL``
  matches FQANs without a role;
* permissions: the user is admitted when the union of ``<allow>`` over
  matching entries, minus the union of their ``<deny>``, holds ``exec``,
  ``read`` or ``write`` (the shipped example only allows read/write).

Parsing is hardened: no DTD (a DOCTYPE is refused), no entities, no network,
bounded size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sitefiles.cglob import glob_match

if TYPE_CHECKING:  # lxml (30 ms to import) is loaded by parse_gacl, when a GACL file is read
    from lxml import etree

MAX_GACL_BYTES = 1024 * 1024
GRANTING = frozenset({"exec", "read", "write"})
_VOMS_FIELDS = ("vo", "group", "role", "capability", "fqan", "voms")


class GaclError(Exception):
    """The GACL file is unusable; the message is one line."""


@dataclass(frozen=True)
class Fqan:
    """One FQAN split up; ``issuer`` is the AC's VOMS server subject, if known."""

    text: str
    vo: str
    group: str
    role: str | None
    capability: str | None
    issuer: str | None = None


def split_fqan(text: str, issuer: str | None = None) -> Fqan:
    group_parts, role, cap = [], None, None
    for part in text.split("/")[1:]:
        if part.startswith("Role="):
            role = part[5:]
        elif part.startswith("Capability="):
            cap = part[11:]
        else:
            group_parts.append(part)
    group = "/" + "/".join(group_parts)
    vo = group_parts[0] if group_parts else ""
    return Fqan(text, vo, group, None if role in (None, "NULL") else role,
                None if cap in (None, "NULL") else cap, issuer)


@dataclass(frozen=True)
class Credential:
    kind: str  # "voms", "person", "any-user" or the unknown element name
    fields: tuple[tuple[str, str], ...] = ()

    def matches(self, dn: str, fqans: Sequence[Fqan], use_dn: bool) -> bool:
        if self.kind == "any-user":
            return True
        if self.kind == "person":
            want = dict(self.fields).get("dn")
            return use_dn and want is not None and glob_match(want, dn)
        if self.kind == "voms":
            return any(self._voms_match(f) for f in fqans)
        return False

    def _voms_match(self, fqan: Fqan) -> bool:
        for name, want in self.fields:
            if name == "vo":
                ok = glob_match(want, fqan.vo)
            elif name == "group":
                ok = glob_match(want if want.startswith("/") else "/" + want, fqan.group)
            elif name == "role":
                ok = fqan.role is None if want == "NULL" else (
                    fqan.role is not None and glob_match(want, fqan.role))
            elif name == "capability":
                ok = fqan.capability is None if want == "NULL" else (
                    fqan.capability is not None and glob_match(want, fqan.capability))
            elif name == "fqan":
                ok = glob_match(want, fqan.text)
            else:  # "voms": the AC signer
                ok = fqan.issuer is not None and fqan.issuer == want
            if not ok:
                return False
        return True


@dataclass(frozen=True)
class Entry:
    line: int
    credentials: tuple[Credential, ...]
    allow: frozenset[str]
    deny: frozenset[str]


def _local(el: etree._Element) -> str:
    """The element's local name, as ``etree.QName(el).localname`` gives it."""
    return str(el.tag).rpartition("}")[2]


def _text(el: etree._Element) -> str:
    return "".join(str(t) for t in el.itertext()).strip()


def _credential(el: etree._Element) -> Credential:
    kind = _local(el)
    if kind in ("voms", "voms-cred"):
        fields = []
        for child in el:
            if not isinstance(child.tag, str):
                continue
            name = _local(child)
            if name in _VOMS_FIELDS:
                fields.append((name, _text(child)))
            else:
                return Credential(f"voms/{name}")  # unknown field: never matches
        return Credential("voms", tuple(fields))
    if kind == "person":
        return Credential("person", tuple(
            (_local(c), _text(c)) for c in el if isinstance(c.tag, str)))
    return Credential(kind)


def _perms(el: etree._Element | None) -> frozenset[str]:
    if el is None:
        return frozenset()
    return frozenset(_local(c) for c in el if isinstance(c.tag, str))


def parse_gacl(data: bytes, filename: str) -> tuple[Entry, ...]:
    if len(data) > MAX_GACL_BYTES:
        raise GaclError(f"{filename}: larger than {MAX_GACL_BYTES} bytes")
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             dtd_validation=False, huge_tree=False, remove_comments=True,
                             remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise GaclError(f"{filename}: not well-formed XML: {exc}") from None
    doc = root.getroottree().docinfo
    if getattr(doc, "doctype", "") or doc.internalDTD is not None:
        raise GaclError(f"{filename}: a DOCTYPE is not allowed")
    if _local(root) != "gacl":
        raise GaclError(f"{filename}: root element is <{_local(root)}>, "
                        "not <gacl>")
    entries = []
    for el in root:
        if not isinstance(el.tag, str) or _local(el) != "entry":
            continue
        creds, allow, deny = [], None, None
        for child in el:
            if not isinstance(child.tag, str):
                continue
            name = _local(child)
            if name == "allow":
                allow = child
            elif name == "deny":
                deny = child
            else:
                creds.append(_credential(child))
        if not creds:
            raise GaclError(f"{filename}:{el.sourceline}: <entry> without a credential")
        line = el.sourceline
        lineno = line if isinstance(line, int) else 0
        entries.append(Entry(lineno, tuple(creds), _perms(allow), _perms(deny)))
    return tuple(entries)


def gacl_allows(entries: Sequence[Entry], dn: str, fqans: Sequence[Fqan], use_dn: bool
                ) -> Entry | None:
    """The first matching entry that grants, or None when access is refused."""
    allowed: set[str] = set()
    denied: set[str] = set()
    first: Entry | None = None
    for entry in entries:
        if all(c.matches(dn, fqans, use_dn) for c in entry.credentials):
            allowed |= entry.allow
            denied |= entry.deny
            if first is None and entry.allow & GRANTING:
                first = entry
    return first if (allowed - denied) & GRANTING else None
