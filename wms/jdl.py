"""JDL: the job description, in ClassAd syntax, parsed with a grammar (lark), not by hand.

In:  the text of a JDL file (``[ Executable = "x"; ... ]`` or the bracket-less form gLite
     also accepted) and the file's name for messages.
Out: a :class:`Job` with the attributes this CE acts on, or :class:`JdlError` whose text is
     ``file:line:column: reason`` (the first problem; nothing is submitted).

The grammar is the ClassAd expression language (old ClassAds, which the gLite JDL used):
literals, lists ``{...}``, nested ads ``[...]``, attribute references (``other.X``), the
operators with their precedence, ``is``/``isnt``, ``?:``, calls and subscripts, and
``//``, ``/* */`` and ``#`` comments. Attribute names are case-insensitive, as in ClassAds.
Attributes used here must be literals; ``Requirements`` and ``Rank`` are checked for syntax
and kept as text (one CE: there is nothing to match against). Unknown attributes are kept,
as the gLite WMS kept them.

Why lark and not the HTCondor ``classad`` module: that module installs, but its parser reports
no line numbers, and a user with a 40-line JDL needs to know where the mistake is.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from safetext import one_line

__all__ = ["Expr", "JdlError", "Job", "parse_ad", "parse_job"]

MAX_JDL_BYTES = 256 * 1024

GRAMMAR = r"""
start: "[" attrs "]" ";"? -> ad
     | attrs               -> ad
attrs: (attr ";")* attr?
attr: NAME "=" expr

?expr: cond
?cond: or_ | or_ "?" expr ":" cond -> ternary
?or_: and_ | or_ OROR and_ -> binop
?and_: bor | and_ ANDAND bor -> binop
?bor: bxor | bor BAR bxor -> binop
?bxor: band | bxor CARET band -> binop
?band: eq | band AMP eq -> binop
?eq: rel | eq EQOP rel -> binop
?rel: shift | rel RELOP shift -> binop
?shift: add | shift SHIFTOP add -> binop
?add: mul | add ADDOP mul -> binop
?mul: unary | mul MULOP unary -> binop
?unary: postfix | UNOP unary -> unop | ADDOP unary -> unop
?postfix: primary
        | postfix "." NAME -> select
        | postfix "[" expr "]" -> subscript
?primary: STRING -> string
        | NUMBER -> number
        | TRUE -> true
        | FALSE -> false
        | UNDEFINED -> undefined
        | ERROR -> error
        | NAME "(" [expr ("," expr)*] ")" -> call
        | NAME -> ref
        | "{" [expr ("," expr)*] "}" -> list
        | "[" attrs "]" -> record
        | "(" expr ")"

TRUE.3: /true\b/i
FALSE.3: /false\b/i
UNDEFINED.3: /undefined\b/i
ERROR.3: /error\b/i
EQOP.3: "=?=" | "=!=" | "==" | "!=" | /is\b/i | /isnt\b/i
NAME: /[A-Za-z_][A-Za-z0-9_]*/
STRING: /"(\\.|[^"\\\n])*"/
NUMBER: /(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?/
OROR: "||"
ANDAND: "&&"
BAR: "|"
CARET: "^"
AMP: "&"
RELOP: "<=" | ">=" | "<" | ">"
SHIFTOP: ">>>" | "<<" | ">>"
ADDOP: "+" | "-"
MULOP: "*" | "/" | "%"
UNOP: "!" | "~"
COMMENT: /\/\/[^\n]*/ | /#[^\n]*/ | /\/\*(.|\n)*?\*\//
%ignore COMMENT
%ignore /[ \t\r\n\f]+/
"""

_WORDS = {
    "NAME": "an attribute name", "STRING": "a string", "NUMBER": "a number",
    "SEMICOLON": "';'", "EQUAL": "'='", "RSQB": "']'", "LSQB": "'['", "RBRACE": "'}'",
    "LBRACE": "'{'", "RPAR": "')'", "LPAR": "'('", "COMMA": "','", "COLON": "':'",
    "$END": "the end of the file",
}  # fmt: skip
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'", "/": "/"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_JOB_TYPES = ("normal", "mpich", "interactive", "parametric", "checkpointable",
              "partitionable", "dag", "collection", "parallel")  # fmt: skip


class JdlError(Exception):
    """Bad JDL: ``file:line:column: reason`` (column 0 when only the line is known)."""

    def __init__(self, source: str, line: int, column: int, reason: str) -> None:
        self.source, self.line, self.column = source, line, column
        self.reason = one_line(reason, 300)
        where = f"{source}:{line}:{column}" if column else f"{source}:{line}"
        super().__init__(f"{where}: {self.reason}")


@dataclass(frozen=True)
class Expr:
    """An expression kept as its source text (not a literal: Requirements, Rank, ...)."""

    text: str


@dataclass(frozen=True)
class _Attr:
    name: str
    value: Any
    line: int
    column: int


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _describe_expected(expected: set[str] | frozenset[str]) -> str:
    words = sorted({_WORDS.get(name, name.lower()) for name in expected})
    if len(words) > 6:
        return ""
    return ", expected " + " or ".join(words)


def _syntax_error(exc: UnexpectedInput, source: str, text: str) -> JdlError:
    line, column = getattr(exc, "line", 0) or 0, getattr(exc, "column", 0) or 0
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        reason = f"unexpected character {char!r}"
        if char == "'":
            reason += " (strings take double quotes)"
    elif isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        reason = "unexpected end of file (a missing ']', '}', ')' or closing quote?)"
    elif isinstance(exc, UnexpectedToken):
        token = exc.token
        shown = one_line(str(token), 40)
        reason = f"unexpected {shown!r}{_describe_expected(exc.expected)}"
        if token.type == "NAME" and "SEMICOLON" in exc.expected:
            reason += " (a missing ';' before it?)"
    else:  # pragma: no cover - lark raises only the kinds above
        reason = str(exc).splitlines()[0]
    return JdlError(source, line, column, reason)


def _string(token: Token, source: str) -> str:
    body, out, i = str(token)[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise JdlError(source, token.line or 0, (token.column or 0) + i + 1,
                               f"unknown escape '\\{nxt}' in a string")  # fmt: skip
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _value(node: Tree | Token, source: str, text: str) -> Any:
    """A Python value for a literal (str, int, float, bool, list of literals), else Expr."""
    if isinstance(node, Tree):
        kind = node.data
        if kind == "string":
            return _string(node.children[0], source)  # type: ignore[arg-type]
        if kind == "number":
            raw = str(node.children[0])
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        if kind in ("true", "false"):
            return kind == "true"
        if kind == "list":
            items = [_value(c, source, text) for c in node.children if c is not None]
            if not any(isinstance(i, Expr) for i in items):
                return items
        if kind == "unop" and str(node.children[0]) == "-":
            inner = _value(node.children[1], source, text)
            if isinstance(inner, int | float) and not isinstance(inner, bool):
                return -inner
    meta = node.meta if isinstance(node, Tree) else None
    if meta is not None and not meta.empty:
        return Expr(text[meta.start_pos : meta.end_pos])
    return Expr(str(node))


def parse_ad(text: str, source: str = "<jdl>") -> dict[str, _Attr]:
    """The top-level attributes by lower-cased name; JdlError for bad syntax or a repeat."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JDL_BYTES:
        raise JdlError(source, 1, 0, f"larger than {MAX_JDL_BYTES} bytes")
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source, text) from None
    attrs: dict[str, _Attr] = {}
    body = tree.children[0] if tree.children else None
    for attr in body.children if isinstance(body, Tree) else ():
        assert isinstance(attr, Tree)
        name_tok, value_node = attr.children
        assert isinstance(name_tok, Token)
        name = str(name_tok)
        line, column = name_tok.line or 0, name_tok.column or 0
        if name.lower() in attrs:
            first = attrs[name.lower()]
            why = f"attribute {name} given twice (first on line {first.line})"
            raise JdlError(source, line, column, why)
        attrs[name.lower()] = _Attr(name, _value(value_node, source, text), line, column)
    return attrs


@dataclass(frozen=True)
class Job:
    """What the CE acts on; ``extra`` keeps every other attribute (source text or value)."""

    executable: str
    arguments: str = ""
    std_input: str | None = None
    std_output: str | None = None
    std_error: str | None = None
    input_sandbox: tuple[str, ...] = ()
    output_sandbox: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    virtual_organisation: str | None = None
    retry_count: int = 0
    requirements: str | None = None
    rank: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what ``wms status --json`` shows and the CE stores)."""
        return {
            "Executable": self.executable, "Arguments": self.arguments,
            "StdInput": self.std_input, "StdOutput": self.std_output,
            "StdError": self.std_error, "InputSandbox": list(self.input_sandbox),
            "OutputSandbox": list(self.output_sandbox),
            "Environment": [f"{k}={v}" for k, v in self.environment],
            "VirtualOrganisation": self.virtual_organisation, "RetryCount": self.retry_count,
            "Requirements": self.requirements, "Rank": self.rank,
        }  # fmt: skip


class _Reader:
    """Typed access to the attributes, each error pointing at the attribute's line."""

    def __init__(self, attrs: dict[str, _Attr], source: str) -> None:
        self.attrs, self.source = dict(attrs), source
        self.lines = {k: (a.line, a.column) for k, a in attrs.items()}

    def fail(self, attr: _Attr, reason: str) -> JdlError:
        return JdlError(self.source, attr.line, attr.column, f"{attr.name}: {reason}")

    def take(self, name: str) -> _Attr | None:
        return self.attrs.pop(name.lower(), None)

    def string(self, name: str, *, required: bool = False) -> str | None:
        attr = self.take(name)
        if attr is None:
            if required:
                raise JdlError(self.source, 1, 0, f"{name} is missing (it is required)")
            return None
        if not isinstance(attr.value, str):
            raise self.fail(attr, 'must be a string literal ("...")')
        return attr.value

    def strings(self, name: str) -> tuple[tuple[str, ...], _Attr | None]:
        attr = self.take(name)
        if attr is None:
            return (), None
        value = [attr.value] if isinstance(attr.value, str) else attr.value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(attr, 'must be a string or a list of strings ({"a", "b"})')
        return tuple(value), attr

    def integer(self, name: str, default: int) -> int:
        attr = self.take(name)
        if attr is None:
            return default
        if isinstance(attr.value, bool) or not isinstance(attr.value, int) or attr.value < 0:
            raise self.fail(attr, "must be a whole number, 0 or more")
        return attr.value

    def expression(self, name: str) -> str | None:
        attr = self.take(name)
        if attr is None:
            return None
        value = attr.value
        if isinstance(value, Expr):
            return value.text
        return "true" if value is True else "false" if value is False else repr(value)


def _job_file(reader: _Reader, name: str, value: str | None) -> str | None:
    """StdInput/StdOutput/StdError: a plain relative name inside the job's directory."""
    if value is None:
        return None
    if not _plain_relative(value):
        attr = _Attr(name, value, *_line_of(reader, name))
        raise reader.fail(attr, f"{value!r}: a relative file name inside the job directory")
    return value


def _line_of(reader: _Reader, name: str) -> tuple[int, int]:
    return reader.lines.get(name.lower(), (1, 0))


def _plain_relative(path: str) -> bool:
    """No absolute path, no ``..`` component, no empty or control-character name."""
    if not path or path.startswith("/") or not path.isprintable():
        return False
    parts = path.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def _environment(reader: _Reader) -> tuple[tuple[str, str], ...]:
    values, attr = reader.strings("Environment")
    pairs = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(name):
            assert attr is not None
            raise reader.fail(attr, f"{item!r}: each entry is NAME=VALUE with a shell name")
        pairs.append((name, value))
    return tuple(pairs)


def _check_type(reader: _Reader) -> None:
    attr = reader.take("Type")
    if attr is not None and (not isinstance(attr.value, str) or attr.value.lower() != "job"):
        raise reader.fail(attr, f"{attr.value!r}: only \"Job\" is supported (no DAGs or "
                                "collections on this CE)")  # fmt: skip
    attr = reader.take("JobType")
    if attr is None:
        return
    kind = attr.value.lower() if isinstance(attr.value, str) else None
    if kind != "normal":
        known = kind in _JOB_TYPES
        hint = " (this CE runs single batch jobs)" if known else ""
        raise reader.fail(attr, f'{attr.value!r}: only "Normal" jobs are supported here{hint}')


def _sandbox(reader: _Reader, name: str, *, output: bool) -> tuple[str, ...]:
    values, attr = reader.strings(name)
    for item in values:
        path = item[len("file://") :] if item.startswith("file://") else item
        if "://" in path:
            assert attr is not None
            raise reader.fail(attr, f"{item!r}: only local files are supported")
        if output and not _plain_relative(path):
            assert attr is not None
            raise reader.fail(attr, f"{item!r}: a relative file name inside the job directory")
        if not path:
            assert attr is not None
            raise reader.fail(attr, "an empty file name")
    stripped = tuple(v[len("file://") :] if v.startswith("file://") else v for v in values)
    if len(set(stripped)) != len(stripped):
        assert attr is not None
        raise reader.fail(attr, "a file is listed twice")
    return stripped


def parse_job(text: str, source: str = "<jdl>") -> Job:
    """Parse and check a JDL job description; JdlError with file:line:column on any problem."""
    reader = _Reader(parse_ad(text, source), source)
    _check_type(reader)
    executable = reader.string("Executable", required=True) or ""
    if not executable or not executable.isprintable():
        raise JdlError(source, _line_of(reader, "Executable")[0], 0,
                       "Executable: an empty or unprintable name")  # fmt: skip
    job = Job(
        executable=executable,
        arguments=reader.string("Arguments") or "",
        std_input=_job_file(reader, "StdInput", reader.string("StdInput")),
        std_output=_job_file(reader, "StdOutput", reader.string("StdOutput")),
        std_error=_job_file(reader, "StdError", reader.string("StdError")),
        input_sandbox=_sandbox(reader, "InputSandbox", output=False),
        output_sandbox=_sandbox(reader, "OutputSandbox", output=True),
        environment=_environment(reader),
        virtual_organisation=reader.string("VirtualOrganisation"),
        retry_count=reader.integer("RetryCount", 0),
        requirements=reader.expression("Requirements"),
        rank=reader.expression("Rank"),
        extra={a.name: (a.value.text if isinstance(a.value, Expr) else a.value)
               for a in reader.attrs.values()},
    )  # fmt: skip
    _check_executable(job, source, _line_of(reader, "Executable")[0])
    try:
        shlex.split(job.arguments)
    except ValueError as exc:
        raise JdlError(
            source,
            _line_of(reader, "Arguments")[0],
            0,
            f"Arguments: {exc} (quotes split the arguments as a shell would)",
        ) from None
    return job


def _check_executable(job: Job, source: str, line: int) -> None:
    """An absolute path on the worker node, or a file shipped in the input sandbox."""
    if job.executable.startswith("/"):
        return
    name = job.executable[2:] if job.executable.startswith("./") else job.executable
    if name in job.input_sandbox and _plain_relative(name):
        return
    why = (
        f"Executable {job.executable!r}: give an absolute path on the worker node, or list "
        "the file in InputSandbox"
    )
    raise JdlError(source, line, 0, why)
