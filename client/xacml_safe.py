"""Hardened XML parsing for untrusted SOAP bodies.

Refuses cheaply and in a fixed order, so hostile input costs at most one bounded pass:
size first (before any parsing), then encoding, then any DTD (billion laughs and XXE need
one), then the parse itself, then depth and element/attribute count. The parser never
resolves entities, never touches the network, never loads a DTD, and without ``huge_tree``
libxml2 itself stops at 256 levels, so a 10,000-deep document is refused inside the parser.
Depth and count are checked by XPath in C: a Python loop over parse events cost twice the
parse itself, on the client and on the server, for every message.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lxml import etree

from client.xacml_errors import InvalidEncoding, MessageTooLarge, NotSoap, XmlRejected

_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_DECL_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})""")
_UTF8_NAMES = {b"utf-8", b"utf8", b"us-ascii", b"ascii"}


@dataclass(frozen=True)
class Limits:
    """Bounds on an incoming message. The defaults fit any real SCAS query many times over:
    the captured C-client query is 10 KiB, depth 7, about 90 elements and attributes."""

    max_bytes: int = 1 << 20
    max_depth: int = 32
    max_elements: int = 10_000  # elements plus attributes


DEFAULT_LIMITS = Limits()


def check_text(body: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """The checks that need no parser: emptiness, size, UTF-8, declared encoding, DTD."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("body must be bytes")
    size = len(body)
    if size > limits.max_bytes:
        raise MessageTooLarge(f"message is {size} bytes, limit is {limits.max_bytes}")
    if not bytes(body[:4096]).strip():
        raise NotSoap("empty body")
    data = bytes(body)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEncoding(f"body is not valid UTF-8 (byte offset {exc.start})") from None
    if b"\x00" in data:
        raise InvalidEncoding("body contains a NUL byte")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    declared = _DECL_ENCODING.match(data)
    if declared and declared.group(1).lower() not in _UTF8_NAMES:
        name = declared.group(1).decode("ascii")
        raise InvalidEncoding(f"declared encoding {name} is not supported, send UTF-8")
    if _DTD.search(data):
        raise XmlRejected("DTD or entity declarations are not allowed")


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
