"""The glexec Python front: config, input checks, environment, exit codes, the hand-over.

Everything here runs without root. The end of the flow, the setuid helper, is replaced by a
small Python stub (written per test in tmp) that records its argv, its environment and what
it reads from the ticket and proxy descriptors, then exits: that proves the hand-over (the
ticket SCAS signed, the proxy's bytes, the options of the helper's CLI) without privileges.
The real setuid helper end to end (installed setuid root, run as an unprivileged user) is
tested by its own tests, by the engineer who owns ``glexec/setuid_helper.c``.

SCAS outcomes come from a live ``scas-server`` on loopback (mutual TLS, tickets signed for
pilots with ``/dteam/Role=pilot``, see tests/test_server_tickets.py): Deny -> 203, Permit
without a ticket -> 203, Permit with a ticket -> the helper is exec'd; endpoints down -> 202
within the deadline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from server_harness import USER_DN, Server, Site

from glexec import config as conf
from glexec import inputs
from glexec.cli import parse_args
from glexec.status import GlexecError, record
from testkit.pki import TestPKI, User

REPO = Path(__file__).resolve().parent.parent
GLEXEC = str(Path(sysconfig.get_path("scripts")) / "glexec")
HELPER_C = REPO / "glexec" / "setuid_helper.c"
ME = pwd.getpwuid(os.getuid()).pw_name
UID = os.getuid()
NOBODY = 65534
PILOT_DN = "/DC=org/DC=example/O=Users/CN=Pilot Factory"
DENIED_DN = "/DC=org/DC=example/O=Users/CN=Dave Denied"


def key_line(seed: bytes = b"glexec front tests") -> str:
    raw = hashlib.sha256(seed).digest()
    return f"ed25519:{hashlib.sha256(raw).hexdigest()[:16]}:{base64.b64encode(raw).decode()}"


def conf_text(**keys: object) -> str:
    """A [glexec] section: helper-compatible defaults, overridden (or dropped with None)."""
    values: dict[str, object] = {
        "user_white_list": ME,
        "scas_ticket_key": key_line(),
        "scas_endpoints": "https://localhost:9/",
        "mode": "log-only",
        "preserve_env_variables": "TERM, LANG",
    }
    values.update(keys)
    body = "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)
    return f"# test file\n[glexec]\n{body}"


def write_conf(directory: Path, text: str | None = None, **keys: object) -> Path:
    path = directory / "glexec.conf"
    path.write_text(text if text is not None else conf_text(**keys))
    path.chmod(0o644)
    return path


def parse(text: str) -> conf.Config:
    return conf.parse(text.encode(), "glexec.conf")


def refused(text: str) -> GlexecError:
    with pytest.raises(GlexecError) as info:
        parse(text)
    assert info.value.code == 202 and info.value.phase == "config"
    return info.value


def run(
    args: list[str], env: dict[str, str], tmp: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_RUNTIME_DIR": str(tmp)}
    full.update(env)
    return subprocess.run(
        [GLEXEC, *args], env=full, cwd=tmp, capture_output=True, text=True, timeout=timeout
    )


def status_of(path: Path) -> dict[str, object]:
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    return dict(json.loads(lines[0]))


# -- the config file ---------------------------------------------------------------------------


def test_config_defaults_and_types() -> None:
    cfg = parse(conf_text(scas_timeout="2.5", linger="no", scas_socket="/run/scas.sock"))
    assert cfg["linger"] is False and cfg["scas_timeout"] == 2.5 and cfg["min_target_uid"] == 1000
    assert cfg["preserve_env_variables"] == ("TERM", "LANG")
    assert cfg["setuid_helper"] == conf.DEFAULT_HELPER and cfg["scas_order"] == (
        "round-robin-random-start"
    )
    assert cfg.endpoints == ["unix:/run/scas.sock", "https://localhost:9/"]


def test_config_unknown_key_is_202_naming_it() -> None:
    err = refused(conf_text(lineger="yes"))
    assert "unknown key lineger" in err.reason


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("linger", "maybe", "linger: must be yes or no"),
        ("linger", "yes # comment", "linger: must be yes or no"),
        ("min_target_uid", "0", "min_target_uid: must be a whole number 1.."),
        ("min_target_gid", "0100", "min_target_gid: must be a whole number"),
        ("min_target_uid", "4294967295", "min_target_uid"),
        ("scas_order", "fastest", "scas_order: must be one of round-robin"),
        ("scas_timeout", "-1", "scas_timeout: must be a number of seconds"),
        ("scas_deadline", "nan", "scas_deadline"),
        ("scas_endpoints", "http://scas.example.org/", "scas_endpoints: endpoint"),
        ("scas_endpoints", "https://a:1/, https://a:1/", "listed twice"),
        ("scas_socket", "run/scas.sock", "scas_socket: must be an absolute path"),
        ("preserve_env_variables", "TERM, LD_PRELOAD", "LD_PRELOAD is never passed on"),
        ("preserve_env_variables", "TERM,,LANG", "preserve_env_variables: bad entry ''"),
        ("user_white_list", "*", "user_white_list: bad entry '*'"),
        ("mode", "setgid", "mode: must be one of setuid, log-only"),
        ("log_level", "9", "log_level: must be a whole number 0..5"),
        ("nonce_dir", "nonces", "nonce_dir: must be an absolute path"),
        ("scas_ticket_key", "ed25519:0123456789abcdef:REPLACE", "scas_ticket_key: the key"),
        ("scas_ticket_key", key_line()[:8] + "0" * 16 + key_line()[24:], "is not the key's"),
        ("scas_ticket_key", "rsa:abc", "scas_ticket_key: must be ed25519:"),
        ("input_lock_mechanism", "lockf", "input_lock_mechanism: must be one of flock"),
        ("epilogue_timeout", "soon", "epilogue_timeout"),
    ],
)
def test_config_bad_value_is_202_naming_the_key(key: str, value: str, says: str) -> None:
    assert says in refused(conf_text(**{key: value})).reason


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("linger = yes\n[glexec]\n", "line 1: key outside any section"),
        ("[glexec]\nlinger = yes\nlinger = no\n", "key linger given twice"),
        ("[glexec\n", "line 1: bad section header"),
        ("[glexec]\njust words\n", "line 2: expected key = value"),
        ("[other]\nlinger = yes\n", "has no [glexec] section"),
        (conf_text(scas_ticket_key=None), "scas_ticket_key is missing"),
        (conf_text(log_destination="file"), "log_destination = file needs log_file"),
        (conf_text(scas_endpoints=None), "no SCAS to ask"),
    ],
)
def test_config_structure_errors(text: str, says: str) -> None:
    assert says in refused(text).reason


def test_config_other_sections_and_comments_are_ignored() -> None:
    text = "; top\n[dummy]\nanything at all\n" + conf_text() + "\n[more]\nlinger = maybe\n"
    assert parse(text)["linger"] is True


def test_config_legacy_keys_parse() -> None:
    """A site's existing glexec.conf works unchanged (the helper skips keys it does not use)."""
    cfg = parse(conf_text(use_lcas="no", lcmaps_get_account_policy="glexec_get_account",
                          create_target_proxy="no", setuid_helper="/opt/h"))  # fmt: skip
    assert cfg["create_target_proxy"] is False and cfg["setuid_helper"] == "/opt/h"
    assert cfg["lcmaps_get_account_policy"] and cfg["use_lcas"] is False


def _c_strings(block: str) -> set[str]:
    return set(re.findall(r'"([^"]*)"', block))


def test_key_and_deny_lists_mirror_the_c_helper() -> None:
    """The front validates the helper's keys as the helper does; it refuses at least every
    variable the helper refuses, so nothing it lets through dies later. Fails when
    setuid_helper.c changes them: keep them in step."""
    src = HELPER_C.read_text()

    def c_list(name: str) -> set[str]:
        found = re.search(name + r"\[\] = \{(.*?)\};", src, re.S)
        assert found, f"{name} not found in {HELPER_C.name}"
        return _c_strings(found[1])

    set_key = src[src.index("static void set_key(") : src.index("static void read_conf(")]
    own = set(re.findall(r'strcmp\(k, "([a-z_]+)"\)', set_key))
    if "YESNO[]" in src:
        own |= c_list("YESNO")
    assert own == set(conf.HELPER_KEYS)
    assert not set(conf.FRONT_KEYS) & own
    assert c_list("BAD_PREFIX") <= set(conf.BAD_PREFIXES)
    assert c_list("BAD_NAME") <= set(conf.BAD_NAMES)
    assert c_list("OWN_NAME") == set(inputs.OWN_NAMES)


def test_config_file_checks(tmp_path: Path) -> None:
    path = write_conf(tmp_path)
    assert conf.read_file(str(path), caller_uid=UID, overridden=True)
    path.chmod(0o664)
    with pytest.raises(GlexecError, match="group- or world-writable"):
        conf.read_file(str(path), caller_uid=UID, overridden=True)
    path.chmod(0o644)
    link = tmp_path / "link.conf"
    link.symlink_to(path)
    with pytest.raises(GlexecError) as info:
        conf.read_file(str(link), caller_uid=UID, overridden=True)
    assert info.value.code == 202
    if UID == 0:
        os.chown(path, NOBODY, NOBODY)  # neither root nor the caller
        caller = UID
    else:
        caller = UID + 1  # the file is ours; pretend to be someone else
    with pytest.raises(GlexecError, match=r"owned by uid \d+, not by root or the caller"):
        conf.read_file(str(path), caller_uid=caller, overridden=True)
    if UID != 0:  # the default path must be root's; an override may be the caller's
        with pytest.raises(GlexecError, match="not by root"):
            conf.read_file(str(path), caller_uid=UID, overridden=False)


# -- the input proxies --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("glexec-pki"), reuse_keys=True)


@pytest.fixture(scope="module")
def alice(pki: TestPKI) -> User:
    return pki.user("alice", "/DC=org/DC=example/O=Users/CN=Alice Front")


def _read(path: str, **kw: object) -> inputs.Proxy:
    return inputs.read_proxy("GLEXEC_CLIENT_CERT", path, uid=kw.pop("uid", UID), **kw)  # type: ignore[arg-type]


def _input_error(path: str, **kw: object) -> str:
    with pytest.raises(GlexecError) as info:
        _read(path, **kw)
    assert (info.value.code, info.value.phase) == (201, "input")
    assert info.value.reason.startswith("GLEXEC_CLIENT_CERT: ")
    return info.value.reason


def test_proxy_good(pki: TestPKI, alice: User) -> None:
    path = pki.proxy(alice)
    proxy = _read(path)
    assert proxy.has_key and proxy.pem == Path(path).read_bytes()
    assert proxy.not_after > time.time()
    assert _read(pki.proxy(alice, legacy=True)).has_key  # CN=proxy is a proxy too
    assert _read(pki.proxy(alice, parent=path)).has_key  # a proxy of a proxy


def test_proxy_path_owner_mode_symlink(pki: TestPKI, alice: User, tmp_path: Path) -> None:
    path = pki.proxy(alice)
    assert "set but empty" in _input_error("")
    assert "not an absolute path" in _input_error(os.path.relpath(path))
    assert "No such file" in _input_error(str(tmp_path / "missing.pem"))
    assert "not by the caller" in _input_error(path, uid=UID + 1)
    os.chmod(path, 0o640)
    assert "mode 0640 is too open" in _input_error(path)
    os.chmod(path, 0o700)
    assert _read(path).has_key  # "no looser than 0700"
    os.chmod(path, 0o4600)
    assert "mode 4600 is too open" in _input_error(path)
    os.chmod(path, 0o600)
    link = tmp_path / "link.pem"
    link.symlink_to(path)
    assert "a symbolic link" in _input_error(str(link))
    assert "not a regular file" in _input_error(str(tmp_path))


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


def test_proxy_content(pki: TestPKI, alice: User, tmp_path: Path) -> None:
    proxy = Path(pki.proxy(alice)).read_bytes()
    certs = b"".join(re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n",
                                proxy, re.S))  # fmt: skip
    keyless = _write(tmp_path, "keyless.pem", certs)
    assert "holds no private key" in _input_error(keyless)
    assert not _read(keyless, key_optional=True).has_key
    user = Path(alice.cert_path).read_bytes() + Path(alice.key_path).read_bytes()
    assert "not a proxy" in _input_error(_write(tmp_path, "user.pem", user))
    key = serialization.load_pem_private_key(Path(alice.key_path).read_bytes(), None)
    locked = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.BestAvailableEncryption(b"secret"))  # fmt: skip
    encrypted = _write(tmp_path, "enc.pem", certs + locked)
    assert "the private key is encrypted" in _input_error(encrypted)
    assert "empty" in _input_error(_write(tmp_path, "empty.pem", b""))
    assert "no certificate" in _input_error(_write(tmp_path, "junk.pem", b"junk\n" * 3))
    garbled = proxy.replace(b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN CERTIFICATE-----\n!")
    assert "not base64" in _input_error(_write(tmp_path, "garbled.pem", garbled))
    big = _write(tmp_path, "big.pem", proxy + b"#" * 70000)
    assert "larger than 65535 bytes" in _input_error(big)


def test_proxy_expired(pki: TestPKI, alice: User) -> None:
    old = pki.proxy(alice, not_before=pki.now - timedelta(hours=2), lifetime=timedelta(hours=1))
    assert "the proxy expired" in _input_error(old)


# -- the environment and the command line -------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "MALLOC_CHECK_", "GCONV_PATH", "PYTHONPATH",
             "PERL5LIB", "BASH_ENV", "BASH_FUNC_x%%"],
)  # fmt: skip
def test_forbidden_env_names_are_201_naming_them(name: str) -> None:
    cfg = parse(conf_text())
    with pytest.raises(GlexecError) as info:
        inputs.payload_env(cfg, {}, [], [f"{name}=x"])
    assert info.value.code == 201 and info.value.phase == "environment"
    assert name[:10] in info.value.reason


def test_env_precedence_and_rules(tmp_path: Path) -> None:
    cfg = parse(conf_text(preserve_env_variables="TERM, LANG, PATH, HOME, EXTRA"))
    lines = tmp_path / "env.txt"
    lines.write_text("# comment\nLANG=nl_NL.UTF-8\n\nEXTRA=a=b\n")
    as_json = tmp_path / "env.json"
    as_json.write_text(json.dumps({"EXTRA": "multi\nline"}))
    environ = {"TERM": "vt100", "LANG": "C", "HOME": "/pilot", "LD_PRELOAD": "/x.so"}
    env = inputs.payload_env(cfg, environ, [str(lines), str(as_json)], ["TERM=xterm"])
    assert env == ["TERM=xterm", "LANG=nl_NL.UTF-8", "EXTRA=multi\nline"]
    for opts, says in [
        (["HOME=/x"], "HOME is set by glexec for the target account"),
        (["SECRET=1"], "SECRET is not in preserve_env_variables"),
        (["TERM=a", "TERM=b"], "TERM given twice"),
        (["1ABC=x"], "is not a variable name"),
        (["TERM"], "--env needs NAME=VALUE"),
    ]:
        with pytest.raises(GlexecError, match=re.escape(says)):
            inputs.payload_env(cfg, {}, [], opts)


def test_parse_args_stops_at_the_command() -> None:
    opts = parse_args(["--env", "A=1", "--env=B=2", "--status-fd", "5", "/bin/sh", "-c",
                       "--env", "--", "-V"])  # fmt: skip
    assert opts.env == ["A=1", "B=2"] and opts.status_fd == "5"
    assert opts.command == ["/bin/sh", "-c", "--env", "--", "-V"]
    assert parse_args(["--", "-weird"]).command == ["-weird"]
    assert parse_args([]).command == []
    both = ["--status-fd", "3", "--status-file", "f"]
    for bad, says in [(["--bogus"], "unknown option"), (["--env"], "needs a value"),
                      (both, "exclude each other")]:  # fmt: skip
        with pytest.raises(GlexecError, match=says):
            parse_args(bad)


def test_status_record_shape() -> None:
    line = record("input", 201, 'bad "proxy"\nsecond line')
    assert json.loads(line) == {
        "phase": "input", "exit": 201, "signal": 0, "reason": 'bad "proxy"?second line'
    }  # fmt: skip
    assert line.endswith(b"}\n") and line.count(b"\n") == 1


# -- the command: -h, -v, -V, --check-config, and early refusals --------------------------------


def test_help_and_version(tmp_path: Path) -> None:
    for flag in ("-h", "--help"):
        out = run([flag], {}, tmp_path)
        assert out.returncode == 0 and out.stdout.startswith("usage: glexec")
    out = run(["-v"], {}, tmp_path)
    assert out.returncode == 0 and re.match(r"glexec \(scas-stack\) \S+\n$", out.stdout)


def test_dash_V_prints_the_effective_settings(tmp_path: Path) -> None:
    path = write_conf(tmp_path, scas_timeout="3")
    out = run(["-V"], {"GLEXEC_CONFIG": str(path), "X509_CERT_DIR": "/ca"}, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"GLEXEC_CONFIG_FILE={path}" in lines and "GLEXEC_CONFIG_SOURCE=$GLEXEC_CONFIG" in lines
    assert "scas_timeout = 3.0" in lines and "scas_deadline = 60.0   # default" in lines
    assert f"caller_uid={UID}" in lines and "scas_ca_dir=/ca" in lines
    assert f"setuid_helper = {conf.DEFAULT_HELPER}   # default" in lines
    broken = write_conf(tmp_path, conf_text(linger="perhaps"))
    out = run(["-V"], {"GLEXEC_CONFIG": str(broken)}, tmp_path)
    assert out.returncode == 202 and f"GLEXEC_CONFIG_FILE={broken}" in out.stdout
    assert "linger: must be yes or no" in out.stderr


def test_check_config(tmp_path: Path) -> None:
    env = {"GLEXEC_CONFIG": str(write_conf(tmp_path))}
    out = run(["--check-config"], env, tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    write_conf(tmp_path, conf_text(setuid_helper="/opt/helper", use_lcas="no"))
    out = run(["--check-config"], env, tmp_path)
    assert out.returncode == 0, out.stderr  # legacy keys: the helper skips them
    write_conf(tmp_path, conf_text(colour="blue"))
    out = run(["--check-config"], env, tmp_path)
    assert out.returncode == 202 and "unknown key colour" in out.stderr
    out = run(["--check-config"], {"GLEXEC_CONFIG": str(tmp_path / "none.conf")}, tmp_path)
    assert out.returncode == 202 and "No such file" in out.stderr


@pytest.fixture
def front(tmp_path: Path, pki: TestPKI, alice: User) -> dict[str, str]:
    """An environment whose every input is good; SCAS is not reachable (port 9)."""
    helper = tmp_path / "helper"
    helper.write_text("#!/bin/sh\nexit 99\n")
    helper.chmod(0o755)
    path = write_conf(tmp_path, setuid_helper=str(helper), scas_deadline="3")
    return {
        "GLEXEC_CONFIG": str(path),
        "GLEXEC_CLIENT_CERT": pki.proxy(alice),
        "X509_USER_PROXY": pki.proxy(alice),
        "X509_CERT_DIR": pki.certdir,
    }


@pytest.mark.parametrize(
    ("args", "env", "code", "phase", "says"),
    [
        (["--env", "LD_PRELOAD=/x.so", "/bin/true"], {}, 201, "environment", "LD_PRELOAD"),
        (["--env", "PYTHONPATH=/x", "/bin/true"], {}, 201, "environment", "PYTHONPATH"),
        (["--env", "SECRET=1", "/bin/true"], {}, 201, "environment", "preserve_env_variables"),
        (["true"], {}, 201, "input", "give an absolute path"),
        (["/bin/true"], {"GLEXEC_CLIENT_CERT": "x.pem"}, 201, "input", "not an absolute path"),
        (["/bin/true"], {"GLEXEC_CLIENT_CERT": ""}, 201, "input", "set but empty"),
        (["/bin/true"], {"GLEXEC_SOURCE_PROXY": ""}, 201, "input", "set but empty"),
        (["/bin/true"], {"GLEXEC_TARGET_PROXY": "/no/such/dir/x509"}, 201, "input",
         "does not exist"),
        (["/bin/true"], {"GLEXEC_TARGET_PROXY": "/etc/passwd"}, 201, "input",
         "exists; the helper never overwrites it"),
        ([], {}, 201, "usage", "refreshes GLEXEC_TARGET_PROXY, which is not set"),
        (["--frobnicate", "/bin/true"], {}, 201, "usage", "unknown option"),
        (["/bin/true"], {"X509_USER_PROXY": ""}, 201, "input", "X509_USER_PROXY is not set"),
        (["/bin/true"], {"X509_CERT_DIR": "/no/such/ca-dir"}, 201, "scas", "not a directory"),
        (["/bin/true"], {"GLEXEC_CONFIG": "/no/such/glexec.conf"}, 202, "config", "No such file"),
        (["--workdir", "job", "/bin/true"], {}, 201, "input", "give an absolute path"),
        (["--workdir", "/tmp/../x/..", "/bin/true"], {}, 201, "input", "whose last part"),
        (["--workdir", "{nobodys}/newjob", "/bin/true"], {}, 201, "input",
         "nobodys is not your directory"),
        (["--workdir", "/no/such/newjob", "/bin/true"], {}, 201, "input", "No such file"),
        (["--workdir", "{tmp}", "/bin/true"], {}, 201, "input", "exists; glexec creates"),
    ],
)  # fmt: skip
def test_early_refusals(
    front: dict[str, str], tmp_path: Path, args: list[str], env: dict[str, str], code: int,
    phase: str, says: str,
) -> None:  # fmt: skip
    """Refused before SCAS is asked (SCAS is unreachable here: asking would give 202)."""
    status = tmp_path / "status.json"
    nobodys = tmp_path / "nobodys"
    nobodys.mkdir()
    if os.getuid() == 0:
        os.chown(nobodys, 65534, 65534)
    elif "{nobodys}" in " ".join(args):
        pytest.skip("needs root to make a directory someone else owns")
    args = [a.format(tmp=tmp_path / "helper", nobodys=nobodys) for a in args]
    out = run(["--status-file", str(status), *args], {**front, **env}, tmp_path)
    assert out.returncode == code, out.stderr
    assert says in out.stderr
    rec = status_of(status)
    assert (rec["phase"], rec["exit"], rec["signal"]) == (phase, code, 0)
    assert says in str(rec["reason"])


def test_not_whitelisted_is_203_before_scas(front: dict[str, str], tmp_path: Path) -> None:
    write_conf(tmp_path, conf_text(user_white_list=".pilot, someone",
                                   setuid_helper=str(tmp_path / "helper")))  # fmt: skip
    out = run(["/bin/true"], front, tmp_path)
    assert out.returncode == 203 and "is not in user_white_list" in out.stderr


def test_helper_missing_or_not_setuid_is_202_before_scas(
    front: dict[str, str], tmp_path: Path
) -> None:
    write_conf(tmp_path, conf_text(setuid_helper=str(tmp_path / "missing")))
    out = run(["/bin/true"], front, tmp_path)
    assert out.returncode == 202 and "missing: No such file" in out.stderr
    write_conf(tmp_path, conf_text(setuid_helper=str(tmp_path / "helper"), mode="setuid"))
    out = run(["/bin/true"], front, tmp_path)
    assert out.returncode == 202 and "is not setuid root" in out.stderr


def test_keyless_proxy_on_omission_list_is_203_without_asking(
    front: dict[str, str], tmp_path: Path
) -> None:
    pem = Path(front["GLEXEC_CLIENT_CERT"]).read_bytes()
    certs = re.sub(rb"-----BEGIN RSA PRIVATE KEY-----.*?-----END RSA PRIVATE KEY-----\n", b"",
                   pem, flags=re.S)  # fmt: skip
    keyless = _write(tmp_path, "keyless.pem", certs)
    env = {**front, "GLEXEC_CLIENT_CERT": keyless}
    out = run(["/bin/true"], env, tmp_path)
    assert out.returncode == 201 and "holds no private key" in out.stderr
    write_conf(tmp_path, conf_text(omission_private_key_white_list=ME,
                                   setuid_helper=str(tmp_path / "helper")))  # fmt: skip
    out = run(["/bin/true"], env, tmp_path)
    assert out.returncode == 203 and "without proof of possession" in out.stderr


def test_all_endpoints_down_is_202_within_the_deadline(
    front: dict[str, str], tmp_path: Path
) -> None:
    """One endpoint refuses connections, one accepts TCP and never answers (a hung host)."""
    with socket.socket() as closed, socket.socket() as hung:
        closed.bind(("127.0.0.1", 0))
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        urls = f"https://localhost:{closed.getsockname()[1]}/, https://127.0.0.1:{hung.getsockname()[1]}/"
        write_conf(tmp_path, conf_text(
            scas_endpoints=urls, scas_timeout="1", scas_deadline="2", scas_order="round-robin",
            setuid_helper=str(tmp_path / "helper"),
        ))  # fmt: skip
        status = tmp_path / "status.json"
        start = time.monotonic()
        out = run(["--status-file", str(status), "/bin/true"], front, tmp_path)
        took = time.monotonic() - start
    assert out.returncode == 202, out.stderr
    assert "no SCAS answer: all 2 endpoints failed within 2 s" in out.stderr
    assert "refused" in out.stderr and "timeout" in out.stderr
    assert took < 2 + 3  # the deadline, plus interpreter start-up on a busy machine
    rec = status_of(status)
    assert (rec["phase"], rec["exit"]) == ("scas", 202)


def _imported(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd="/",
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}


def test_import_is_lean() -> None:
    """`import glexec.cli` and `glexec -h` load no server, web, XML or TLS stack (modules the
    interpreter loads anyway, such as site's, do not count)."""
    baseline = _imported("pass")
    loaded = _imported("import sys; from glexec.cli import main; main(['-h'])") - baseline
    assert "glexec.cli" in loaded
    heavy = {"flask", "zeep", "lxml", "lxml.etree", "werkzeug", "requests", "ssl", "http.client",
             "cryptography", "OpenSSL", "scas_server", "credentials", "client.xacml",
             "client.transport", "client.query", "dataclasses", "argparse", "json",
             "re"}  # fmt: skip
    assert not heavy & loaded, sorted(heavy & loaded)
    assert not {m for m in loaded if m.startswith(("flask", "zeep", "lxml", "scas_server"))}


# -- a live SCAS: Deny, Permit without a ticket, Permit with a ticket (the hand-over) ------------

STUB = """#!{python}
# Stands in for setuid_helper: records what glexec handed over, then exits {code}.
import json, os, sys
args = sys.argv[1:]
def opt(name):
    return args[args.index(name) + 1] if name in args else None
def drain(fd):
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk
with open("/proc/self/environ", "rb") as fh:  # as exec'd (Python itself adds LC_CTYPE)
    env = [v.decode() for v in fh.read().split(b"\\0") if v]
rec = {{"argv": sys.argv, "env": env, "cwd": os.getcwd(),
        "fds": sorted(int(f) for f in os.listdir("/proc/self/fd"))}}
for name in ("--ticket-fd", "--proxy-fd"):
    rec[name] = drain(int(opt(name))).decode()
if opt("--status-fd"):
    os.write(int(opt("--status-fd")), b'{{"phase": "payload", "exit": {code}, "signal": 0, '
             b'"reason": "stub"}}\\n')
with open({record!r}, "w") as fh:
    json.dump(rec, fh)
sys.exit({code})
"""


@dataclass
class Central:
    site: Site
    server: Server
    public_line: str
    pilot: str  # the pilot's VOMS proxy with /dteam/Role=pilot: TLS identity, gets tickets
    member: str  # the same person's proxy without the pilot role: Permit, but no ticket
    payload: str  # the payload owner's proxy
    denied: str  # a banned user's proxy

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.port}/"


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    from scas_server import ticket as tickets

    site = Site(str(tmp_path_factory.mktemp("glexec-scas")))
    site.write_lcmaps(uid=NOBODY, gid=NOBODY, sgid=NOBODY)
    site.pki.trust_vo("dteam")
    ban = Path(site.directory) / "ban_users.db"
    ban.write_text(f'"{DENIED_DN}"\n')
    Path(site.directory, "lcas.db").write_text(
        f'pluginname="lcas_plugin_example.mod"\npluginname=lcas_userban.mod,pluginargs={ban}\n'
    )
    pilot_user = site.pki.user("pilot", PILOT_DN)
    _, _, public_line = tickets.keygen(site.directory)
    settings = site.write_config(
        pep_allow=["/DC=org/DC=example/CN=pep*", PILOT_DN],  # the harness probes as the PEP
        ticket={"key": str(Path(site.directory, tickets.KEY_FILE_NAME)),
                "pep_fqans": ["/*/Role=pilot"]},
    )  # fmt: skip
    c = Central(
        site=site,
        server=Server(site, settings),
        public_line=public_line,
        pilot=site.pki.proxy(pilot_user, fqans=["/dteam/Role=pilot/Capability=NULL"]),
        member=site.pki.proxy(pilot_user, fqans=["/dteam/Role=NULL/Capability=NULL"]),
        payload=site.pki.proxy(site.user, fqans=["/dteam/Role=NULL/Capability=NULL"]),
        denied=site.pki.proxy(site.pki.user("dave", DENIED_DN)),
    )
    yield c
    c.server.stop()


def _live(c: Central, tmp: Path, *, code: int = 0, **keys: object) -> tuple[dict[str, str], Path]:
    """A glexec.conf for `c` with the stub helper; (environment, the stub's record file)."""
    record_path = tmp / "helper-record.json"
    helper = tmp / "helper-stub"
    helper.write_text(STUB.format(python=sys.executable, code=code, record=str(record_path)))
    helper.chmod(0o755)
    conf_keys: dict[str, object] = {
        "scas_endpoints": c.url, "setuid_helper": str(helper), "scas_deadline": "20",
        "scas_ticket_key": c.public_line.split("=", 1)[1].strip(),
    }  # fmt: skip
    conf_keys.update(keys)
    path = write_conf(tmp, conf_text(**conf_keys))
    env = {
        "GLEXEC_CONFIG": str(path), "GLEXEC_CLIENT_CERT": c.payload, "X509_USER_PROXY": c.pilot,
        "X509_CERT_DIR": c.site.pki.certdir, "TERM": "xterm-front", "LD_PRELOAD": "/evil.so",
    }  # fmt: skip
    return env, record_path


@pytest.mark.slow
def test_live_deny_is_203(central: Central, tmp_path: Path) -> None:
    env, record_path = _live(central, tmp_path)
    status = tmp_path / "status.json"
    out = run(["--status-file", str(status), "/bin/true"],
              {**env, "GLEXEC_CLIENT_CERT": central.denied}, tmp_path)  # fmt: skip
    assert out.returncode == 203, out.stderr
    assert f"SCAS at {central.url} denied the payload's proxy" in out.stderr
    assert (status_of(status)["phase"], status_of(status)["exit"]) == ("scas", 203)
    assert not record_path.exists()  # the helper never ran
    assert central.site.audit_lines()[-1]["decision"] == "Deny"


@pytest.mark.slow
def test_live_permit_without_ticket_is_203(central: Central, tmp_path: Path) -> None:
    env, record_path = _live(central, tmp_path)
    out = run(["/bin/true"], {**env, "X509_USER_PROXY": central.member}, tmp_path)
    assert out.returncode == 203, out.stderr
    assert "issued no ticket: is this pilot on ticket.pep_allow" in out.stderr
    assert not record_path.exists()
    line = central.site.audit_lines()[-1]
    assert line["decision"] == "Permit" and str(line["ticket"]).startswith("not issued")


@pytest.mark.slow
def test_live_permit_with_ticket_execs_the_helper(central: Central, tmp_path: Path) -> None:
    """The stub helper gets the signed ticket and the payload proxy on inherited descriptors,
    the pass-through options, an empty environment, and the command untouched."""
    from scas_server import ticket as tickets

    env, record_path = _live(central, tmp_path, code=7)
    target = str(tmp_path / "x509up_target")
    status = tmp_path / "status.json"
    args = ["--status-file", str(status), "--env", "LANG=nl_NL.UTF-8",
            "--workdir", str(tmp_path / "job-7"),
            "/bin/echo", "a b", "--env", "-V", "--"]  # fmt: skip
    out = run(args, {**env, "GLEXEC_TARGET_PROXY": target}, tmp_path)
    assert out.returncode == 7, out.stderr  # the helper's status is glexec's
    rec = json.loads(record_path.read_text())
    argv = rec["argv"]
    options = ("--ticket-fd", "--proxy-fd", "--status-fd", "--workdir-fd")
    tfd, pfd, sfd, wfd = (int(argv[argv.index(o) + 1]) for o in options)
    assert argv[1:] == [
        "--ticket-fd", str(tfd), "--proxy-fd", str(pfd), "--status-fd", str(sfd),
        "--target-proxy", target, "--workdir-fd", str(wfd), "--workdir-name", "job-7",
        "--env", "TERM=xterm-front", "--env", "LANG=nl_NL.UTF-8",
        "--", "/bin/echo", "a b", "--env", "-V", "--",
    ]  # fmt: skip
    assert {tfd, pfd, sfd, wfd} <= set(rec["fds"]) and min(tfd, pfd, sfd, wfd) >= 3
    assert rec["env"] == [] and rec["cwd"] == str(tmp_path)  # the helper moves to the workdir
    assert not (tmp_path / "job-7").exists()  # the helper creates it, not the front
    assert rec["--proxy-fd"] == Path(central.payload).read_text()
    fields = tickets.verify_ticket(
        rec["--ticket-fd"].strip(), central.public_line, now=time.time(),
        host=socket.gethostname().lower(), caller_uid=UID,
        proxy_sha256=tickets.proof_of_possession(rec["--proxy-fd"].encode()),
    )  # fmt: skip
    assert fields.version == 2 and fields.subject == USER_DN and fields.uid == NOBODY
    assert status_of(status) == {"phase": "payload", "exit": 7, "signal": 0, "reason": "stub"}
    line = central.site.audit_lines()[-1]
    assert line["ticket_nonce"] == fields.nonce and line["stated_caller_uid"] == UID


@pytest.mark.slow
def test_live_refresh_without_command(central: Central, tmp_path: Path) -> None:
    """No command: the helper writes a fresh copy next to the target and execs mv over it."""
    env, record_path = _live(central, tmp_path)
    target = tmp_path / "x509up_refresh"
    out = run([], {**env, "GLEXEC_TARGET_PROXY": str(target),
                   "GLEXEC_SOURCE_PROXY": central.payload}, tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    argv = json.loads(record_path.read_text())["argv"]
    tmp = argv[argv.index("--target-proxy") + 1]
    assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(
        ".x509up_refresh.glexec-"
    )
    assert argv[-7:] == ["--exec", "--", os.path.realpath("/usr/bin/mv"), "-f", "-T", tmp,
                         str(target)]  # fmt: skip
    other = central.site.pki.proxy(central.site.user)
    out = run([], {**env, "GLEXEC_TARGET_PROXY": str(target), "GLEXEC_SOURCE_PROXY": other},
              tmp_path)  # fmt: skip
    assert out.returncode == 201 and "hold different proxies" in out.stderr
