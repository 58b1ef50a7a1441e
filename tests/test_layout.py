"""Package layout: imports point down, a lean client, working scripts, documented packages."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]

# Top-level name -> the project's own top-level names it may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "safetext": frozenset(),
    "credentials": frozenset({"safetext"}),
    "leases": frozenset({"safetext"}),
    "sitefiles": frozenset({"safetext"}),
    "client": frozenset({"safetext"}),
    "lcas": frozenset({"credentials", "sitefiles", "safetext"}),
    # client is a leaf (it imports nothing of ours): the scas_client plugin may use it
    "lcmaps": frozenset({"credentials", "leases", "sitefiles", "client", "safetext"}),
    "scas_server": frozenset(
        {"credentials", "leases", "sitefiles", "lcas", "lcmaps", "client", "safetext"}
    ),
    "glexec": frozenset({"client", "safetext"}),
    "site_admin": frozenset(
        {"credentials", "leases", "sitefiles", "lcas", "lcmaps", "client", "scas_server",
         "safetext"}
    ),
    "wms": frozenset({"client", "credentials", "safetext"}),
    "pilot": frozenset({"credentials", "safetext"}),
    "testkit": frozenset({"credentials", "client", "safetext"}),
}
OURS = frozenset(ALLOWED) | {"stress", "tests"}
NOT_LIBRARY = frozenset({"tests", "stress", "testkit"})


def _sources(root: Path, top: str) -> list[Path]:
    """Every .py file of top-level package or module `top` under `root`."""
    module = root / f"{top}.py"
    return [module] if module.is_file() else sorted((root / top).rglob("*.py"))


def _imported_tops(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every import in `path`, relative ones resolved."""
    package = path.relative_to(root).parent.parts
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, (node.module or "").split(".")[0]))
        elif isinstance(node, ast.ImportFrom):
            base = package[: max(0, len(package) - node.level + 1)]
            found.append((node.lineno, base[0] if base else "<beyond top level>"))
    return found


def offending_arrows(root: Path, allowed: dict[str, frozenset[str]] = ALLOWED) -> list[str]:
    """'file:line: pkg -> other' for every import of ours that `allowed` does not permit."""
    return [
        f"{path.relative_to(root)}:{line}: {top} -> {other}"
        for top, may in allowed.items()
        for path in _sources(root, top)
        for line, other in _imported_tops(path, root)
        if other != top and other not in may and (other in OURS or other.startswith("<"))
    ]


def test_imports_point_down() -> None:
    """A lower layer importing a higher one (or test tooling) breaks the layering."""
    assert all(_sources(REPO, top) for top in ALLOWED), "a checked package has no sources"
    arrows = offending_arrows(REPO)
    assert not arrows, "imports pointing up or sideways:\n" + "\n".join(arrows)


def test_every_library_package_is_under_the_import_rule() -> None:
    """A new top-level package missing from ALLOWED would escape the rule above."""
    setup = PYPROJECT["tool"]["setuptools"]
    tops = {name.split(".")[0] for name in setup["packages"]} | set(setup["py-modules"])
    assert tops == set(ALLOWED) - NOT_LIBRARY


def test_walker_reports_back_arrows(tmp_path: Path) -> None:
    """The walker sees every import form, so test_imports_point_down cannot pass vacuously."""
    sub = tmp_path / "lcas" / "sub"
    sub.mkdir(parents=True)
    (tmp_path / "lcas" / "__init__.py").write_text("import lcas.sub\nfrom . import sub\n")
    (sub / "__init__.py").write_text("")
    (sub / "mod.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from lcmaps.evaluation import X\n"
        "def f() -> None:\n"
        "    import scas_server.app, os\n"
        "    from client import xacml\n"
        "from .. import chain\n"
        "from ... import beyond\n"
        "from .... import far_beyond\n"
        "import credentials.dn\n"
    )
    (tmp_path / "safetext.py").write_text("import testkit\n")
    allowed = {"lcas": ALLOWED["lcas"], "safetext": ALLOWED["safetext"]}
    mod = Path("lcas", "sub", "mod.py")
    assert sorted(offending_arrows(tmp_path, allowed)) == sorted(
        [
            f"{mod}:3: lcas -> lcmaps",
            f"{mod}:5: lcas -> scas_server",
            f"{mod}:6: lcas -> client",
            f"{mod}:8: lcas -> <beyond top level>",
            f"{mod}:9: lcas -> <beyond top level>",
            "safetext.py:1: safetext -> testkit",
        ]
    )


@functools.cache
def _run_python(code: str) -> str:
    """stdout of `code` in a fresh interpreter in the repo (fresh sys.modules)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    "heavy",
    [
        "flask",
        "zeep",
        "requests",
        "werkzeug",
        "urllib.request",
        "http.server",
    ],
)
def test_client_import_is_lean(heavy: str) -> None:
    """glexec and other clients import `client` on every call: no web stack may come along."""
    out = _run_python("import sys, client, client.xacml; print(*sorted(sys.modules))")
    assert heavy not in out.split()


WSDL_PROBE = """
import json, sys
from pathlib import Path
calls, opened = [], []
def profile(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_filename.endswith("xacml_wsdl.py"):
        calls.append(code.co_name)
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
sys.setprofile(profile)
import client.xacml
sys.setprofile(None)
at_import = [name for name in calls if name != "<module>"]
built = [f"{mod}.{name}" for mod, m in list(sys.modules.items()) if mod.startswith("client")
         for name, v in vars(m).items() if isinstance(v, str | bytes)
         and b"wsdl:definitions" in (v if isinstance(v, bytes) else v.encode())
         and b"{tns}" not in (v if isinstance(v, bytes) else v.encode())]
files = [p for p in opened if Path(p).suffix in (".wsdl", ".xsd", ".xml")]
calls.clear()
sys.setprofile(profile)
client.xacml.wsdl("https://scas.example.org:8443/")
sys.setprofile(None)
print(json.dumps({"at_import": at_import, "built": built, "files": files, "on_call": calls}))
"""


def test_client_import_does_not_build_the_wsdl() -> None:
    """The WSDL is built on call: importing the client must not format or read it."""
    seen = json.loads(_run_python(WSDL_PROBE))
    assert "wsdl" in seen["on_call"], "probe broken: it did not see a wsdl() call"
    assert (seen["at_import"], seen["built"], seen["files"]) == ([], [], [])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_target_is_callable(name: str) -> None:
    """A console script whose module or function is gone fails only when a site runs it."""
    module, _, attr = SCRIPTS[name].partition(":")
    target: Any = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    assert callable(target)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_script_runs_help(name: str, tmp_path: Path) -> None:
    """The installed wrapper starts and prints usage (imports resolve outside the repo cwd)."""
    exe = Path(sysconfig.get_path("scripts")) / name
    assert exe.is_file(), f"{exe} is not installed (reinstall: pip install -e .)"
    proc = subprocess.run(
        [str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert name in proc.stdout or "usage" in proc.stdout.lower()


def test_installed_entry_points_match_pyproject() -> None:
    """A stale install runs old scripts and loads an old plugin list: reinstall after edits."""
    dists = list(
        importlib.metadata.distributions(name="scas-stack", path=[sysconfig.get_path("purelib")])
    )
    assert len(dists) == 1, "scas-stack is not installed in this environment"
    groups = {"console_scripts": SCRIPTS, **PYPROJECT["project"]["entry-points"]}
    installed: dict[str, dict[str, str]] = {}
    for ep in dists[0].entry_points:
        installed.setdefault(ep.group, {})[ep.name] = ep.value
    assert installed == groups


DOCUMENTED = [
    "credentials", "leases", "sitefiles", "lcas", "lcas.plugins", "lcmaps", "lcmaps.plugins",
    "client", "scas_server", "glexec", "site_admin", "wms", "pilot", "testkit",
]  # fmt: skip


@pytest.mark.parametrize("package", DOCUMENTED)
def test_package_docstring_says_what_it_does(package: str) -> None:
    """The __init__ docstring is the package's contract: what comes in, goes out, it imports."""
    init = REPO.joinpath(*package.split("."), "__init__.py")
    doc = ast.get_docstring(ast.parse(init.read_bytes())) or ""
    assert len(doc.strip().splitlines()) > 1, f"{init.relative_to(REPO)}: {doc!r}"


def test_setuptools_packages_match_directories() -> None:
    """A package missing from the list is silently left out of the wheel; a stale one breaks it."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(REPO):
        here = Path(dirpath).relative_to(REPO).parts
        dirnames[:] = [
            d for d in dirnames
            if not d.startswith((".", "__")) and not d.endswith(".egg-info")
            and not (here == () and d in NOT_LIBRARY)
        ]  # fmt: skip
        if here and "__init__.py" in filenames:
            found.add(".".join(here))
    setup = PYPROJECT["tool"]["setuptools"]
    listed = set(setup["packages"])
    assert not found - listed, f"packages missing from pyproject: {sorted(found - listed)}"
    assert not listed - found, f"pyproject lists non-packages: {sorted(listed - found)}"
    assert all((REPO / f"{name}.py").is_file() for name in setup["py-modules"])
