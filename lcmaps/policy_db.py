"""Read an ``lcmaps.db`` exactly as C LCMAPS 1.6.6 does.

The lexer copies the flex scanner (longest match, earlier rule wins on a
tie, labels only at the start of a line, a separate state after ``path``
and after an escaped quote); the parser copies the yacc grammar and the
checks done while reducing it (duplicate variables, variable loops,
duplicate states and policies, cycles). A file C accepts is accepted here
and a file C refuses is refused, with ``file:line: reason``.

``path = DIR`` is accepted with C's quirks and recorded in
:attr:`PolicyDb.module_path` (it also gives each plugin its legacy argv[0]),
but plugins always come from the ``scas_stack.lcmaps_plugins`` entry
points: ``lcmaps_poolaccount.mod`` selects the entry point
``poolaccount``. That keeps a site's existing file working unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from safetext import one_line

LCMAPS_LIB_HOME = "/usr/lib/x86_64-linux-gnu"
LCMAPS_MOD_HOME = "/usr/lib/x86_64-linux-gnu/lcmaps"
MAX_ARGS = 49  # LCMAPS_MAXARGS (51) minus argv[0] minus the NULL slot
MAX_ARG_STRING = 2000


class PolicyDbError(Exception):
    """The file cannot be used; ``str()`` is ``file:line: reason``."""

    def __init__(self, filename: str, lineno: int, reason: str) -> None:
        self.filename = filename
        self.lineno = lineno
        self.reason = one_line(reason)
        super().__init__(f"{filename}:{lineno}: {self.reason}")


@dataclass(frozen=True)
class Rule:
    """``state -> true_branch | false_branch``; after reduction each name is
    the full ``"module args"`` string, as in C."""

    state: str
    true_branch: str | None
    false_branch: str | None
    lineno: int


@dataclass(frozen=True)
class Policy:
    """A named policy: its rules in file order (the first one is where it starts)."""

    name: str
    rules: tuple[Rule, ...]
    lineno: int


@dataclass(frozen=True)
class PluginSpec:
    """One plugin to load: its legacy module name, the argv C would give it,
    and the entry point that implements it."""

    module: str
    args: str | None
    argv: tuple[str, ...]
    entry_point: str
    lineno: int


@dataclass(frozen=True)
class PolicyDb:
    """A parsed lcmaps.db: its policies, and the plugins they name in first-use order."""

    filename: str
    module_path: str | None
    variables: dict[str, str]
    policies: tuple[Policy, ...]
    plugins: tuple[PluginSpec, ...]
    warnings: tuple[str, ...] = field(default=())

    def policy_names(self) -> list[str]:
        return [p.name for p in self.policies]


def module_name(state: str) -> str:
    """The module part of a reduced state: the text up to the first space."""
    return state.split(" ", 1)[0]


def entry_point_name(module: str) -> str | None:
    """``lcmaps_poolaccount.mod`` (or ``liblcmaps_poolaccount.so``, with or
    without a directory) -> ``poolaccount``; anything else -> None."""
    base = module.rsplit("/", 1)[-1]
    m = re.fullmatch(r"(?:lib)?lcmaps_([A-Za-z0-9_]+)\.(?:mod|so)", base)
    return m.group(1) if m else None


def tokenize_args(argstring: str | None) -> list[str]:
    """Split a plugin argument string like ``lcmaps_tokenize``: separators
    blank, tab, newline; a token starting with ``"`` runs to the next ``"``
    (no escapes). Raises ValueError on an unmatched quote or too many args."""
    if argstring is None:
        return []
    out: list[str] = []
    i, n = 0, len(argstring)
    sep = " \t\n"
    while i < n:
        while i < n and argstring[i] in sep:
            i += 1
        if i >= n:
            break
        if argstring[i] == '"':
            j = argstring.find('"', i + 1)
            if j < 0:
                raise ValueError("unmatched quote in plugin arguments")
            tok, i = argstring[i + 1 : j], j + 1
        else:
            j = i
            while j < n and argstring[j] not in sep:
                j += 1
            tok, i = argstring[i:j], j
        out.append(tok)
        if len(out) > MAX_ARGS:
            raise ValueError(f"too many plugin arguments (at most {MAX_ARGS})")
    return out


# --------------------------------------------------------------------- lexer

_TERM = r"[a-zA-Z_.0-9/]+"
_INITIAL_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("WS", re.compile(r"[\t ]+")),
    ("PVAR", re.compile(r"path")),
    ("LABEL", re.compile(r"[ \t]*" + _TERM + ":")),  # only at line start
    ("TERM", re.compile(_TERM)),
    ("NL", re.compile(r"\n")),
    ("TOKEN", re.compile(r"[~=|]")),
    ("TRANS", re.compile(r"->")),
    ("COMMENT", re.compile(r"#[^\n]*\n")),
    ("STR", re.compile(r'"[^"\n]*["\n]')),
    ("ANY", re.compile(r"[^\n]")),
]
_PATH_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("TOKEN", re.compile(r"[~=|]")),
    ("WS", re.compile(r"[\t ]+")),
    ("PATH", re.compile(_TERM)),
    ("NL", re.compile(r"\n")),
    ("COMMENT", re.compile(r"#[^\n]*\n")),
]
_STR = re.compile(r'"[^"\n]*["\n]')


class Tok:
    """A token (a plain class: each dataclass costs a one-shot ~0.5 ms to make)."""

    __slots__ = ("kind", "lineno", "text")

    def __init__(self, kind: str, text: str, lineno: int) -> None:
        self.kind = kind  # PVAR LABEL TERM PATH STRING TRANS '=' '|' '~' or a stray char
        self.text, self.lineno = text, lineno


def _lex(text: str, filename: str) -> Iterator[Tok]:
    pos, lineno, state, n = 0, 1, "INITIAL", len(text)
    while pos < n:
        if state == "MQ":
            m = _STR.match(text, pos)
            if not m:  # flex's default rule: echo and skip (no line count)
                pos += 1
                continue
            y = m.group(0)
            if len(y) >= 3 and y[-2] == "\\":
                yield Tok("STRING", y[1:-2] + '"', lineno)
                pos = m.end() - 1
                state = "INITIAL"
                continue
            raise PolicyDbError(filename, lineno, "unbalanced quotes")
        rules = _PATH_RULES if state == "PATH" else _INITIAL_RULES
        bol = pos == 0 or text[pos - 1] == "\n"
        best, best_len = None, 0
        for kind, rx in rules:
            if kind == "LABEL" and not bol:
                continue
            m = rx.match(text, pos)
            if m and len(m.group(0)) > best_len:
                best, best_len = kind, len(m.group(0))
        if best is None:  # only in PATH state: flex echoes the char
            pos += 1
            continue
        y = text[pos : pos + best_len]
        pos += best_len
        if best == "WS":
            continue
        if best in ("NL", "COMMENT"):
            lineno += 1
            if state == "PATH":
                state = "INITIAL"
            continue
        if best == "PVAR":
            state = "PATH"
            yield Tok("PVAR", y, lineno)
        elif best == "TOKEN":
            yield Tok(y, y, lineno)
        elif best in ("PATH", "TERM"):
            yield Tok(best, y, lineno)
        elif best == "LABEL":
            yield Tok("LABEL", y[:-1], lineno)  # leading blanks stay, like C
        elif best == "TRANS":
            yield Tok("TRANS", y, lineno)
        elif best == "STR":
            if len(y) >= 3 and y[-2] == "\\":
                yield Tok("STRING", y[1:-2] + '"', lineno)
                pos -= 1
                state = "MQ"
            elif y[-1] == '"':
                yield Tok("STRING", y[1:-1], lineno)
            else:
                raise PolicyDbError(filename, lineno, "unbalanced quotes")
        else:
            yield Tok(y, y, lineno)  # stray character: a syntax error below


# -------------------------------------------------------------------- parser


class _RawRule:
    """A rule before variables are reduced (a plain class, as :class:`Tok`)."""

    __slots__ = ("false_branch", "lineno", "state", "true_branch")

    def __init__(self, state: str, true_branch: str | None, false_branch: str | None,
                 lineno: int) -> None:
        self.state, self.true_branch, self.false_branch = state, true_branch, false_branch
        self.lineno = lineno


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.toks = _lex(text, filename)
        self.look: Tok | None = None
        self.eof_line = text.count("\n") + 1
        self.path: str | None = None
        self.path_line = 0
        self.vars: dict[str, tuple[str, int]] = {}
        self.policies: list[tuple[str, list[_RawRule], int]] = []
        self.warnings: list[str] = []

    def peek(self) -> Tok | None:
        if self.look is None:
            self.look = next(self.toks, None)
        return self.look

    def take(self) -> Tok:
        t = self.peek()
        assert t is not None
        self.look = None
        return t

    def error(self, lineno: int, reason: str) -> PolicyDbError:
        return PolicyDbError(self.filename, lineno, reason)

    def syntax_error(self) -> PolicyDbError:
        t = self.peek()
        if t is None:
            return self.error(self.eof_line, "syntax error: unexpected end of file")
        if t.kind not in ("PVAR", "LABEL", "TERM", "PATH", "STRING", "TRANS", "=", "|", "~"):
            return self.error(t.lineno, f"syntax error: unrecognized token '{t.text}'")
        return self.error(t.lineno, f"syntax error near '{t.text.strip()}'")

    def warn(self, lineno: int, reason: str) -> None:
        self.warnings.append(f"{self.filename}:{lineno}: {reason}")

    def expect(self, kind: str) -> Tok:
        t = self.peek()
        if t is None or t.kind != kind:
            raise self.syntax_error()
        return self.take()

    def parse(self) -> None:
        nvars = 0
        while (t := self.peek()) is not None and t.kind in ("PVAR", "TERM"):
            self.parse_var()
            nvars += 1
        if self.peek() is None:
            if nvars:
                raise self.error(self.eof_line, "config file contains no policy rules")
            raise self.error(self.eof_line, "config file is empty")
        while (t := self.peek()) is not None:
            if t.kind != "LABEL":
                raise self.syntax_error()
            self.parse_policy()

    def parse_var(self) -> None:
        t = self.take()
        if t.kind == "PVAR":
            self.expect("=")
            nt = self.peek()
            if nt is not None and nt.kind == "PATH":
                self.take()
                self.set_path(nt.text, nt.lineno)
            return
        self.expect("=")
        nt = self.peek()
        if nt is not None and nt.kind == "TERM":
            value = self.take().text
        elif nt is not None and nt.kind == "STRING":
            value = self.take().text
            while (s := self.peek()) is not None and s.kind == "STRING":
                piece = self.take().text
                if piece:
                    glue = "" if value.endswith('"') and piece.endswith('"') else " "
                    value = value + glue + piece
        else:
            raise self.syntax_error()
        self.add_variable(t.text, value, t.lineno)

    def set_path(self, value: str, lineno: int) -> None:
        if self.path is not None:
            self.warn(lineno, f"path already defined at line {self.path_line}; ignored")
            return
        self.path_line = lineno
        self.path = value if value.startswith("/") else f"{LCMAPS_LIB_HOME}/{value}"

    def add_variable(self, name: str, value: str, lineno: int) -> None:
        if name in self.vars:
            raise self.error(
                lineno, f"variable '{name}' already defined at line {self.vars[name][1]}"
            )
        seen, v = [name], value
        while True:
            if v == name:
                chain = " -> ".join(seen)
                raise self.error(lineno, f"loop detected on variable '{name}' ({chain})")
            if v not in self.vars:
                break
            seen.append(v)
            v = self.vars[v][0]
        self.vars[name] = (value, lineno)

    def parse_policy(self) -> None:
        label = self.take()
        rules: list[_RawRule] = []
        while (t := self.peek()) is not None and t.kind in ("TERM", "~"):
            rules.append(self.parse_rule(rules))
        if not rules:
            self.warn(label.lineno, f"no rules specified for policy '{label.text}'; dropped")
            return
        for name, _r, line in self.policies:
            if name == label.text:
                raise self.error(label.lineno, f"policy '{name}' already defined at line {line}")
        self.policies.append((label.text, rules, label.lineno))

    def parse_rule(self, rules: list[_RawRule]) -> _RawRule:
        t = self.take()
        if t.kind == "~":
            state = self.expect("TERM")
            self.expect("TRANS")
            false = self.expect("TERM")
            rule = _RawRule(state.text, None, false.text, state.lineno)
        else:
            state = t
            self.expect("TRANS")
            true = self.expect("TERM")
            false_t = None
            if (p := self.peek()) is not None and p.kind == "|":
                self.take()
                false_t = self.expect("TERM")
            rule = _RawRule(state.text, true.text, false_t.text if false_t else None, t.lineno)
        pols = {name: line for name, _r, line in self.policies}
        if rule.state in pols:
            raise self.error(
                rule.lineno,
                f"left hand side of a rule cannot be a policy (see line {pols[rule.state]})",
            )
        for r in rules:
            if r.state == rule.state:
                raise self.error(
                    rule.lineno, f"state '{rule.state}' is already in use (see line {r.lineno})"
                )
        for b in (rule.true_branch, rule.false_branch):
            if b is not None and b in pols:
                raise self.error(rule.lineno, f"rule refers to policy '{b}'; not supported")
        return rule


def _check_recursion(p: _Parser, name: str, rules: list[_RawRule]) -> None:
    """Any cycle reachable from the first rule is an error; rules that the
    chain never reaches only earn a warning (as in C)."""
    by_state: dict[str, _RawRule] = {}
    for r in rules:
        by_state.setdefault(r.state, r)
    seen: set[int] = set()

    def walk(rule: _RawRule | None, path: tuple[int, ...]) -> None:
        if rule is None:
            return
        idx = rules.index(rule)
        seen.add(idx)
        if idx in path:
            raise p.error(rule.lineno, f"policy '{name}': rule '{rule.state}' is part of a loop")
        for b in (rule.true_branch, rule.false_branch):
            if b is not None:
                walk(by_state.get(b), (*path, idx))

    walk(rules[0], ())
    for i, r in enumerate(rules):
        if i not in seen:
            p.warn(r.lineno, f"rule '{r.state}' is not part of the chain")


def _reduce(p: _Parser, rules: list[_RawRule], okay: set[str]) -> None:
    """Replace variable names by their values, like ``lcmaps_reduce_to_var``
    (including its refusal to reduce a variable whose value is a state)."""

    def reduce(name: str | None, is_state: bool) -> str | None:
        if name is None:
            return None
        var, n = None, name
        while n in p.vars:
            var, n = n, p.vars[n][0]
        if var is None:
            return name
        if var in okay or _get_rule(rules, n, right_side=is_state) is None:
            okay.add(var)
            return n
        p.warn(p.vars[var][1], f"variable {var} points to state {n}; not substituted")
        return name

    for r in rules:
        r.state = reduce(r.state, True) or r.state
        r.true_branch = reduce(r.true_branch, False)
        r.false_branch = reduce(r.false_branch, False)


def _get_rule(rules: list[_RawRule], name: str, right_side: bool) -> _RawRule | None:
    for r in rules:
        if right_side:
            if (r.true_branch is None or r.true_branch == name) and (
                r.false_branch is None or r.false_branch == name
            ):
                return r
        elif r.state == name:
            return r
    return None


def _argv0(module: str, path: str | None) -> str:
    if module.startswith("/"):
        return module
    base = path or os.environ.get("LCMAPS_MODULES_DIR") or LCMAPS_MOD_HOME
    return f"{base.rstrip('/')}/{module}"


def parse_policy_db(text: str, filename: str = "lcmaps.db") -> PolicyDb:
    """Parse the text of an lcmaps.db; raise :class:`PolicyDbError` on what C refuses.

    Plugins are not looked up or initialised here (see
    :class:`lcmaps.evaluation.Engine`); only their names and argv are derived.
    """
    p = _Parser(text, filename)
    p.parse()
    if not p.policies:
        raise p.error(p.eof_line, "no policy with rules in the config file")
    for name, rules, _line in p.policies:
        _check_recursion(p, name, rules)
    okay: set[str] = set()
    for _name, rules, _line in p.policies:
        _reduce(p, rules, okay)
    plugins: list[PluginSpec] = []
    for _name, rules, _line in p.policies:
        for r in rules:
            for s in (r.state, r.true_branch, r.false_branch):
                if s is None:
                    continue
                mod, _sp, rest = s.partition(" ")
                args = rest if rest else None
                known = next((x for x in plugins if x.module == mod), None)
                if known is not None:
                    # C's lcmaps_plugin_exists: same module and (no args
                    # before, or the new args a prefix of the old ones).
                    old = known.args
                    if old is not None and (args is None or not old.startswith(args)):
                        raise p.error(
                            r.lineno,
                            f"trying to use plugin {mod} twice (first configured at line "
                            f"{known.lineno})",
                        )
                    continue
                if not mod:
                    raise p.error(r.lineno, "empty plugin name")
                ep = entry_point_name(mod)
                if ep is None:
                    raise p.error(r.lineno, f"plugin {mod} not found")
                if args is not None and len(args) > MAX_ARG_STRING:
                    raise p.error(r.lineno, f"argument string of plugin {mod} is too long")
                try:
                    argv = [_argv0(mod, p.path), *tokenize_args(args)]
                except ValueError as exc:
                    raise p.error(r.lineno, f"plugin {mod}: {exc}") from None
                plugins.append(PluginSpec(mod, args, tuple(argv), ep, r.lineno))
    policies = tuple(
        Policy(name, tuple(Rule(x.state, x.true_branch, x.false_branch, x.lineno) for x in rs), ln)
        for name, rs, ln in p.policies
    )
    return PolicyDb(
        filename=filename,
        module_path=p.path,
        variables={k: v for k, (v, _l) in p.vars.items()},
        policies=policies,
        plugins=tuple(plugins),
        warnings=tuple(p.warnings),
    )


def load_policy_db(path: str) -> PolicyDb:
    """Read and parse a file; an unreadable file is a :class:`PolicyDbError` at line 0."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise PolicyDbError(path, 0, f"cannot read: {exc.strerror}") from None
    return parse_policy_db(raw.decode("utf-8", "surrogateescape"), path)
