"""Hardened lxml parsing for untrusted SOAP bodies: the server's queries (the client reads
replies with the standard library's expat under the same limits, :mod:`client.xacml_expat`).

Refuses cheaply and in a fixed order, so hostile input costs at most one bounded pass:
size first (before any parsing), then encoding, then any DTD (billion laughs and XXE need
one), then the parse itself, then depth and element/attribute count. The parser never
resolves entities, never touches the network, never loads a DTD, and without ``huge_tree``
libxml2 itself stops at 256 levels, so a 10,000-deep document is refused inside the parser.
Depth and count are checked by XPath in C: a Python loop over parse events cost twice the
parse itself, for every message.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lxml import etree

from client.xacml_errors import NotSoap, XmlRejected
from client.xacml_expat import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    NO_DTD,
    check_bytes,
    refuse_encoding,
)

_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_DECL_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})""")


@dataclass(frozen=True)
class Limits:
    """Bounds on an incoming message. The defaults fit any real SCAS query many times over:
    the captured C-client query is 10 KiB, depth 7, about 90 elements and attributes."""

    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_elements: int = MAX_NODES  # elements plus attributes


DEFAULT_LIMITS = Limits()


def check_text(body: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """The checks that need no parser: emptiness, size, UTF-8, declared encoding, DTD.

    The first four are shared with the client's expat reader (`check_bytes`); the text scan
    for a DTD is lxml's only (expat refuses one with a handler while it parses).
    """
    data = check_bytes(body, limits.max_bytes)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    declared = _DECL_ENCODING.match(data)
    if declared:
        refuse_encoding(declared.group(1).decode("ascii"))
    if _DTD.search(data):
        raise XmlRejected(NO_DTD)


_local = threading.local()


def _parser() -> etree.XMLParser:
    """This thread's parser (an lxml parser must not be shared between threads)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            huge_tree=False, remove_comments=True, remove_pis=True,
        )  # fmt: skip
    return parser


@lru_cache(maxsize=16)
def _deeper_than(depth: int) -> etree.XPath:
    """True when some element sits more than ``depth`` levels down (the root is level 1)."""
    return etree.XPath("boolean(/" + "/".join(["*"] * (depth + 1)) + ")")


_COUNT = etree.XPath("count(//*) + count(//@*)")


def parse_xml(body: bytes, limits: Limits = DEFAULT_LIMITS) -> etree._Element:
    """Parse an untrusted document and return its root element, or raise an XacmlError."""
    check_text(body, limits)
    try:
        root = etree.fromstring(bytes(body), _parser())
    except etree.XMLSyntaxError as exc:
        if "depth" in (exc.msg or "").lower():
            raise XmlRejected(f"XML nested deeper than {limits.max_depth} elements") from None
        raise NotSoap(f"not well-formed XML: {exc.msg}") from None
    if root is None:
        raise NotSoap("not well-formed XML: no root element")
    if _deeper_than(limits.max_depth)(root):
        raise XmlRejected(f"XML nested deeper than {limits.max_depth} elements")
    count = _COUNT(root)
    if isinstance(count, float) and count > limits.max_elements:
        raise XmlRejected(f"XML has more than {limits.max_elements} elements and attributes")
    tree: Any = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlRejected("DTD or entity declarations are not allowed")
    return root
