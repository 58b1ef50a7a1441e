"""Hardened reading of an untrusted reply with the standard library's expat parser.

In:  the reply bytes and the limits (size; depth 32 and 10,000 elements plus attributes, as
     :mod:`client.xacml_safe` bounds lxml).
Out: the root `Element` (tag in ``{namespace}local`` form, attributes, children, text and
     tails: just what :mod:`client.xacml_decision` reads), or the XacmlError the lxml path
     raises for the same fault: MessageTooLarge, InvalidEncoding, XmlRejected, NotSoap.

Why expat and not lxml: DESIGN §3 keeps the message model lxml-only, but glexec reads one
reply per payload and its start-up time is a product goal; lxml and its helpers cost
17 ms of imports, expat about 1 ms. The server keeps lxml (:mod:`client.xacml_safe`), and
the round-trip tests (this reading what the server builds) keep the two halves together.

Refused cheaply, in this order: size, emptiness, UTF-8 and NUL before parsing (the checks
shared with xacml_safe); then, while parsing, a declared encoding other than UTF-8/ASCII,
any DOCTYPE (so no entity, element or attribute-list declaration can follow), too deep,
too many nodes. Expat never loads an external entity (there is no handler for one) and
stops as soon as a limit is passed, so hostile input costs at most one bounded pass.
"""

from __future__ import annotations

from xml.parsers import expat

from client.xacml_errors import InvalidEncoding, MessageTooLarge, NotSoap, XmlRejected

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 10_000  # elements plus attributes
_UTF8_NAMES = ("utf-8", "utf8", "us-ascii", "ascii")
NO_DTD = "DTD or entity declarations are not allowed"


def check_bytes(body: bytes, max_bytes: int = MAX_BYTES) -> bytes:
    """The checks that need no parser: type, size, emptiness, UTF-8, NUL. The bytes back."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("body must be bytes")
    size = len(body)
    if size > max_bytes:
        raise MessageTooLarge(f"message is {size} bytes, limit is {max_bytes}")
    if not bytes(body[:4096]).strip():
        raise NotSoap("empty body")
    data = bytes(body)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEncoding(f"body is not valid UTF-8 (byte offset {exc.start})") from None
    if b"\x00" in data:
        raise InvalidEncoding("body contains a NUL byte")
    return data


def refuse_encoding(name: str) -> None:
    """InvalidEncoding unless a declared encoding `name` is UTF-8 (or its ASCII subset)."""
    if name.lower() not in _UTF8_NAMES:
        raise InvalidEncoding(f"declared encoding {name} is not supported, send UTF-8")


class Element:
    """One parsed element: the part of lxml's element interface a reply reader needs."""

    __slots__ = ("_tail", "_text", "attrib", "children", "tag")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag = tag
        self.attrib = attrib
        self.children: list[Element] = []
        self._text: list[str] = []
        self._tail: list[str] = []

    @property
    def namespace(self) -> str | None:
        return self.tag[1:].partition("}")[0] if self.tag.startswith("{") else None

    @property
    def localname(self) -> str:
        return self.tag.rpartition("}")[2]

    @property
    def text(self) -> str:
        """The character data before the first child (lxml's ``.text``, "" for none)."""
        return "".join(self._text)

    def get(self, name: str) -> str | None:
        return self.attrib.get(name)

    def iterpath(self, *tags: str) -> Iterator[Element]:
        """Descendants along a path of child tags, in document order (``iterfind("a/b")``)."""
        if not tags:
            yield self
            return
        for child in self.children:
            if child.tag == tags[0]:
                yield from child.iterpath(*tags[1:])

    def find(self, *tags: str) -> Element | None:
        return next(self.iterpath(*tags), None)

    def findtext(self, *tags: str) -> str | None:
        """The `text` of the first element along the path; None when there is none."""
        found = self.find(*tags)
        return None if found is None else found.text

    def itertext(self) -> Iterator[str]:
        """All character data inside, in document order (lxml's ``itertext()``)."""
        yield from self._text
        for child in self.children:
            yield from child.itertext()
            yield from child._tail


class _Reader:
    """Builds the Element tree from expat's events, refusing as soon as a limit is passed."""

    def __init__(self, max_depth: int, max_nodes: int) -> None:
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.nodes = 0
        self.stack: list[Element] = []
        self.root: Element | None = None
        self.sink: list[str] = []  # where the next character data goes: a text or a tail

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if len(self.stack) >= self.max_depth:
            raise XmlRejected(f"XML nested deeper than {self.max_depth} elements")
        self.nodes += 1 + len(attrs)
        if self.nodes > self.max_nodes:
            raise XmlRejected(f"XML has more than {self.max_nodes} elements and attributes")
        element = Element(_clark(name), {_clark(k): v for k, v in attrs.items()})
        if self.stack:
            self.stack[-1].children.append(element)
        else:
            self.root = element
        self.stack.append(element)
        self.sink = element._text

    def end(self, name: str) -> None:
        self.sink = self.stack.pop()._tail

    def data(self, text: str) -> None:
        self.sink.append(text)


def _clark(name: str) -> str:
    """expat's ``namespace local`` as lxml's ``{namespace}local``."""
    namespace, space, local = name.rpartition(" ")
    return f"{{{namespace}}}{local}" if space else name


def _doctype(*_: object) -> None:
    raise XmlRejected(NO_DTD)


def _declaration(_version: str | None, encoding: str | None, _standalone: int) -> None:
    if encoding is not None:
        refuse_encoding(encoding)


def parse(
    body: bytes,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
) -> Element:
    """Parse an untrusted document and return its root element, or raise an XacmlError."""
    data = check_bytes(body, max_bytes)
    reader = _Reader(max_depth, max_nodes)
    parser = expat.ParserCreate("UTF-8", " ")  # the bytes are UTF-8: checked above
    parser.buffer_text = True
    parser.XmlDeclHandler = _declaration
    parser.StartDoctypeDeclHandler = _doctype
    parser.EntityDeclHandler = _doctype
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise NotSoap(f"not well-formed XML: {exc}") from None
    if reader.root is None:  # expat reports "no element found" first; kept for safety
        raise NotSoap("not well-formed XML: no root element")
    return reader.root
