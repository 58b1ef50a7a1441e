"""The real glexec setuid helper, installed setuid root and run as an unprivileged pilot.

Built from glexec/setuid_helper.c with its config path pointing at a root-owned test config and
a fixed test host name, installed root:root 4755 in a directory on a filesystem that is not
mounted nosuid, and run as the throw-away pilot account `ghpilot01` with the ticket and the
payload proxy on inherited pipes. Tickets (docs/ticket.md, version 2) are signed here.
Every refusal checks its exit code, the status record and that nothing was left behind.
"""

from __future__ import annotations

import base64
import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helper_fixtures import (
    key_line,
    leaf_sha256,
    mount_options,
    sign,
    suid_dir,
    throwaway_accounts,
    ticket_fields,
)

from testkit.pki import TestPKI, User

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
HOST = "testhost.example.org"
PILOT, OTHER, POOL1, POOL2, GROUP = "ghpilot01", "ghother", "ghpool01", "ghpool02", "ghgrp"
FORWARDED = {"PATH", "HOME", "USER", "LOGNAME", "X509_USER_PROXY"}
KEY_BLOCK = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----\n",
                       re.S)  # fmt: skip


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root: installs a setuid-root binary and creates accounts"
    for tool in ("make", "cc", "useradd", "userdel", "groupadd", "groupdel"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    if not Path("/usr/include/openssl/evp.h").exists():
        return "libssl-dev (OpenSSL headers) not installed"
    return ""


@dataclass
class Site:
    base: Path
    helper: Path
    conf: Path
    nonces: Path
    log: Path
    bin: Path
    key: Ed25519PrivateKey
    proxy: bytes  # alice's proxy: leaf certificate, its key, the chain
    other_proxy: bytes  # bob's
    ids: dict[str, int]  # uids of the accounts, gid of GROUP as "group"

    def conf_text(self, **overrides: str | None) -> str:
        keys: dict[str, str | None] = {
            "user_white_list": "ghsolo, .ghpilot",
            "min_target_uid": "1000",
            "min_target_gid": "1000",
            "scas_ticket_key": key_line(self.key),
            "nonce_dir": str(self.nonces),
            "mode": "setuid",
            "linger": "yes",
            "target_proxy_cleanup": "yes",
            "log_destination": "file",
            "log_file": str(self.log),
            "preserve_env_variables": "TERM, GLEXEC_JOB_ID, PATH, HOME",
            "scas_endpoints": "https://scas.example.org:8443/",  # the front's: ignored
            "log_level": "3",
        }
        keys.update(overrides)
        body = "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
        return f"# test config\n[other]\nanything = goes\n\n[glexec]\n{body}"

    def write_conf(self, text: str | None = None, **overrides: str | None) -> None:
        self.conf.write_text(text if text is not None else self.conf_text(**overrides))
        os.chown(self.conf, 0, 0)
        os.chmod(self.conf, 0o644)

    def fields(self, **overrides: object) -> dict[str, object]:
        f = ticket_fields(
            self.key, host=HOST, caller_uid=self.ids[PILOT], user=POOL1, uid=self.ids[POOL1],
            gid=self.ids["group"], sgids=[self.ids[POOL1 + ":gid"]],
            proxy_sha256=leaf_sha256(self.proxy),
            subject="/DC=org/DC=example/O=Users/CN=Alice Smith",
        )  # fmt: skip
        f.update(overrides)
        return f

    def ticket(self, **overrides: object) -> str:
        return sign(self.key, self.fields(**overrides))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    status: dict[str, object] | None
    log: str  # the log lines this run added


@pytest.fixture(scope="module")
def site(pki: TestPKI, users: dict[str, User]) -> Iterator[Site]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    base, why = suid_dir([tempfile.gettempdir(), "/var/tmp", REPO])
    if base is None:
        pytest.skip(f"no directory where a setuid binary runs as root: {why}")
    try:
        assert "nosuid" not in mount_options(base)
        with throwaway_accounts([PILOT, OTHER, POOL1, POOL2], [GROUP]) as problem:
            if problem:
                pytest.skip(problem)
            ids = {name: pwd.getpwnam(name).pw_uid for name in (PILOT, OTHER, POOL1, POOL2)}
            ids["group"] = grp.getgrnam(GROUP).gr_gid
            ids[POOL1 + ":gid"] = pwd.getpwnam(POOL1).pw_gid
            if min(ids.values()) < 1000:
                pytest.skip(f"useradd made ids below 1000: {ids}")
            yield _install(base, pki, users, ids)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _install(base: Path, pki: TestPKI, users: dict[str, User], ids: dict[str, int]) -> Site:
    bindir = base / "bin"
    bindir.mkdir(mode=0o755)
    nonces = base / "nonces"
    nonces.mkdir(mode=0o700)
    conf = base / "glexec.conf"
    helper = bindir / "setuid_helper"
    build = subprocess.run(
        ["make", "-C", str(REPO / "glexec"), f"BIN={helper}", f"GLEXEC_CONF={conf}",
         f"GLEXEC_TEST_HOST={HOST}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    os.chown(helper, 0, 0)
    os.chmod(helper, 0o4755)
    plain = bindir / "plain_helper"  # the same binary without the setuid bit
    shutil.copy(helper, plain)
    os.chmod(plain, 0o755)
    (bindir / "exit202").write_text("#!/bin/sh\nexit 202\n")
    (bindir / "exit202").chmod(0o755)
    (bindir / "not_executable").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "not_executable").chmod(0o644)
    for name, owner, mode in [("tp-sticky", 0, 0o1777), ("tp-pool", ids[POOL1], 0o700),
                              ("tp-pilot", ids[PILOT], 0o755)]:  # fmt: skip
        (base / name).mkdir()
        os.chown(base / name, owner, -1)
        os.chmod(base / name, mode)
    key = Ed25519PrivateKey.generate()
    site = Site(
        base=base, helper=helper, conf=conf, nonces=nonces, log=base / "glexec.log",
        bin=bindir, key=key, proxy=Path(pki.proxy(users["alice"])).read_bytes(),
        other_proxy=Path(pki.proxy(users["bob"])).read_bytes(), ids=ids,
    )  # fmt: skip
    site.write_conf()
    return site


@pytest.fixture(autouse=True)
def fresh_conf(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts from the default config and leaves no target proxy behind."""
    if "site" in request.fixturenames:
        site: Site = request.getfixturevalue("site")
        site.write_conf()
        for name in ("tp-sticky", "tp-pool", "tp-pilot"):
            for f in (site.base / name).iterdir():
                f.unlink()
    yield


def run_helper(
    site: Site,
    command: list[str],
    *,
    ticket: str | bytes | None = "",
    proxy: bytes | None = None,
    options: tuple[str, ...] = (),
    user: str = PILOT,
    helper: Path | None = None,
    env: dict[str, str] | None = None,
    extra_fds: tuple[int, ...] = (),
    cwd: str = "/",
    timeout: float = 20,
) -> Result:
    """Run the installed helper as `user` with ticket/proxy/status pipes (ticket "" = a fresh
    valid one, None = no --ticket-fd; proxy None = alice's proxy)."""
    if ticket == "":
        ticket = site.ticket()
    proxy = site.proxy if proxy is None else proxy
    fds, args = [], []
    for opt, data in (("--ticket-fd", ticket), ("--proxy-fd", proxy)):
        if data is None:
            continue
        r, w = os.pipe()
        os.write(w, data.encode() if isinstance(data, str) else data)
        os.close(w)
        fds.append(r)
        args += [opt, str(r)]
    status_r, status_w = os.pipe()
    fds.append(status_w)
    args += ["--status-fd", str(status_w)]
    before = site.log.stat().st_size if site.log.exists() else 0
    try:
        proc = subprocess.run(
            [str(helper or site.helper), *args, *options, "--", *command],
            user=user, group=user, extra_groups=[], pass_fds=(*fds, *extra_fds), cwd=cwd,
            env=env if env is not None else {"PATH": "/usr/bin:/bin", "SECRET": "1"},
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)
    with os.fdopen(status_r, "r") as fh:
        record = fh.read()
    log = site.log.read_text(errors="replace")[before:] if site.log.exists() else ""
    status = json.loads(record) if record else None
    return Result(proc.returncode, proc.stdout, proc.stderr, status, log)


def refused(res: Result, code: int, phase: str, reason: str) -> None:
    """The helper refused with `code` in `phase`, saying `reason`: in its exit code, the status
    record, one line on stderr and (once the log file is open) one log line."""
    assert res.code == code, (res.code, res.stderr, res.status)
    assert res.status is not None and res.status["phase"] == phase, res.status
    assert res.status["exit"] == code and res.status["signal"] == 0
    assert reason in str(res.status["reason"]), res.status
    assert reason in res.stderr and res.stderr.count("\n") == 1
    before_log = phase in ("usage", "config", "install") or "never passed" in reason
    assert before_log or f"refused: phase={phase} exit={code} " in res.log, res.log


def burnt(site: Site, ticket: str) -> bool:
    nonce = re.search(rb"nonce=([0-9a-f]{32})", base64.b64decode(ticket.split(".")[0]))
    assert nonce
    return (site.nonces / nonce[1].decode()).exists()


def _ids_of(out: str) -> tuple[int, int, set[int]]:
    uid = int(re.search(r"uid=(\d+)", out)[1])  # type: ignore[index]
    gid = int(re.search(r"gid=(\d+)", out)[1])  # type: ignore[index]
    groups = {int(g) for g in re.findall(r"(\d+)\(", out.split("groups=", 1)[1])}
    return uid, gid, groups


# -- it works -------------------------------------------------------------------------------


def test_id_runs_as_the_pool_account_with_its_groups(site: Site) -> None:
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket)
    assert res.code == 0, res.stderr
    uid, gid, groups = _ids_of(res.stdout)
    assert (uid, gid) == (site.ids[POOL1], site.ids["group"])
    assert groups <= {site.ids["group"], site.ids[POOL1 + ":gid"]}
    assert site.ids[POOL1 + ":gid"] in groups and 0 not in groups
    assert res.status == {"phase": "payload", "exit": 0, "signal": 0,
                          "reason": "payload exited 0"}  # fmt: skip
    assert burnt(site, ticket)
    assert f"permit: caller_uid={site.ids[PILOT]} caller={PILOT} target={POOL1}" in res.log
    assert "subject=\"/DC=org/DC=example/O=Users/CN=Alice Smith\"" in res.log
    assert re.search(r"payload done: .* exit=0 signal=0 helper_exit=0 utime=", res.log)


def test_target_proxy_is_the_targets_0600_copy_and_is_removed_after(site: Site) -> None:
    target = site.base / "tp-pool" / "x509up"
    res = run_helper(
        site, ["/bin/sh", "-c", 'stat -c "%u %a %F" "$X509_USER_PROXY"; cat "$X509_USER_PROXY"'],
        options=("--target-proxy", str(target)),
    )  # fmt: skip
    assert res.code == 0, res.stderr
    first, rest = res.stdout.split("\n", 1)
    assert first == f"{site.ids[POOL1]} 600 regular file"
    assert rest.encode() == site.proxy  # the verified proxy, byte for byte
    assert not target.exists()  # target_proxy_cleanup = yes


def test_target_proxy_kept_without_cleanup_in_a_sticky_dir(site: Site) -> None:
    site.write_conf(target_proxy_cleanup="no")
    target = site.base / "tp-sticky" / "x509up_kept"
    res = run_helper(site, ["/bin/true"], options=("--target-proxy", str(target)))
    assert res.code == 0, res.stderr
    st = target.lstat()
    assert (st.st_uid, st.st_mode & 0o7777) == (site.ids[POOL1], 0o600)
    assert target.read_bytes() == site.proxy


def test_environment_is_rebuilt_from_the_allow_list(site: Site) -> None:
    target = site.base / "tp-pool" / "proxy"
    res = run_helper(
        site, ["/usr/bin/env"],
        options=("--env", "TERM=vt100", "--env", "GLEXEC_JOB_ID=42", "--env", "HOME=/evil",
                 "--target-proxy", str(target)),
        env={"PATH": "/tmp/evil", "SECRET": "1", "LD_PRELOAD": "/x.so", "TERM": "xterm"},
    )  # fmt: skip
    assert res.code == 0, res.stderr
    got = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert set(got) == FORWARDED | {"TERM", "GLEXEC_JOB_ID"}
    home = pwd.getpwnam(POOL1).pw_dir
    assert got["TERM"] == "vt100" and got["GLEXEC_JOB_ID"] == "42"
    assert got["HOME"] == home and got["USER"] == got["LOGNAME"] == POOL1  # HOME=/evil dropped
    assert got["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert got["X509_USER_PROXY"] == str(target)


def test_exec_mode_replaces_the_helper(site: Site) -> None:
    ticket = site.ticket() + "\n"  # one final LF is allowed
    res = run_helper(site, ["/usr/bin/id", "-u"], ticket=ticket, options=("--exec",))
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(site.ids[POOL1])
    assert res.status is None  # exec'd: the process status is the payload's


def test_stray_descriptors_are_closed(site: Site) -> None:
    stray = os.open("/dev/null", os.O_RDONLY)
    # F_DUPFD takes the lowest free number >= 47 in one step; dup2 onto 47 can fail with
    # EBUSY while another thread of this process is opening a descriptor (seen in CI)
    high = fcntl.fcntl(stray, fcntl.F_DUPFD, 47)
    try:
        res = run_helper(site, ["/usr/bin/ls", "/proc/self/fd"], extra_fds=(high,))
    finally:
        os.close(stray)
        os.close(high)
    assert res.code == 0, res.stderr
    assert sorted(int(fd) for fd in res.stdout.split()) == [0, 1, 2, 3]  # 3: ls's own


# -- refusals: the caller and the ticket ---------------------------------------------------------


def test_helper_run_directly_without_a_ticket(site: Site) -> None:
    res = run_helper(site, ["/usr/bin/id"], ticket=None)
    refused(res, 201, "usage", "no ticket")
    res = run_helper(site, ["/usr/bin/id"], ticket=b"")
    refused(res, 203, "ticket", "no ticket on descriptor")


def test_ticket_descriptor_not_open_is_refused(site: Site) -> None:
    """An unopened --ticket-fd would otherwise be taken by a file the helper opens as root
    (its config or log) and read as the ticket."""
    res = run_helper(site, ["/usr/bin/id"], options=("--ticket-fd", "77"), ticket=None)
    assert res.code == 201 and res.status is not None  # before the log file is open
    assert (res.status["phase"], res.status["exit"]) == ("setup", 201)
    assert "descriptor not open" in res.stderr and "uid=" not in res.stdout


def test_openssl_variables_refused_before_libcrypto_runs(site: Site) -> None:
    """libcrypto's constructor reads OPENSSL_ia32cap before main(): a caller's OPENSSL_*
    variable ends the helper at once (201), before any root work, and nothing is burnt."""
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket,
                     env={"PATH": "/usr/bin:/bin", "OPENSSL_CONF": "/tmp/evil.cnf"})
    assert res.code == 201 and "uid=" not in res.stdout
    assert not burnt(site, ticket)


def test_forged_signature(site: Site) -> None:
    fields = site.fields()
    forged = sign(Ed25519PrivateKey.generate(), fields)  # same key id claimed, other key
    res = run_helper(site, ["/usr/bin/id"], ticket=forged)
    refused(res, 203, "ticket", "signature does not verify")
    assert not burnt(site, forged)
    text, sig = site.ticket().split(".")
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1  # one bit of the signature flipped (always a change, unlike overwriting it)
    res = run_helper(site, ["/usr/bin/id"], ticket=f"{text}.{base64.b64encode(raw).decode()}")
    refused(res, 203, "ticket", "signature does not verify")


@pytest.mark.parametrize(
    ("when", "reason"), [(-400, "ticket has expired"), (+400, "ticket is not valid yet")]
)
def test_expired_or_not_yet_valid(site: Site, when: int, reason: str) -> None:
    now = int(time.time()) + when
    ticket = site.ticket(not_before=now - 30, not_after=now + 120)
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket)
    refused(res, 203, "ticket", reason)
    assert not burnt(site, ticket)


def test_replayed_ticket(site: Site) -> None:
    ticket = site.ticket()
    assert run_helper(site, ["/bin/true"], ticket=ticket).code == 0
    res = run_helper(site, ["/bin/true"], ticket=ticket)
    refused(res, 203, "nonce", "replayed")


def test_another_callers_ticket(site: Site) -> None:
    ticket = site.ticket(caller_uid=site.ids[OTHER])
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket)
    refused(res, 203, "ticket", f"caller uid {site.ids[OTHER]}")
    assert not burnt(site, ticket)


def test_another_hosts_ticket(site: Site) -> None:
    ticket = site.ticket(host="wn99.example.org")
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket)
    refused(res, 203, "ticket", "ticket is for host wn99.example.org, this is " + HOST)
    assert not burnt(site, ticket)


def test_version_1_ticket(site: Site) -> None:
    fields = site.fields(version=1)
    res = run_helper(site, ["/usr/bin/id"], ticket=sign(site.key, fields))
    refused(res, 203, "ticket", "only version 2")


def test_caller_not_whitelisted(site: Site) -> None:
    ticket = site.ticket(caller_uid=site.ids[OTHER])
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket, user=OTHER)
    refused(res, 203, "whitelist", f"caller {OTHER}")
    assert not burnt(site, ticket)


# -- refusals: proof of possession ------------------------------------------------------------


def test_right_chain_without_its_private_key(site: Site) -> None:
    keyless = KEY_BLOCK.sub(b"", site.proxy)
    ticket = site.ticket()
    target = site.base / "tp-pool" / "proxy"
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket, proxy=keyless,
                     options=("--target-proxy", str(target)))  # fmt: skip
    refused(res, 203, "proxy", "no proof of possession")
    assert not burnt(site, ticket) and not target.exists()


def test_encrypted_private_key_is_no_proof_and_never_prompts(site: Site) -> None:
    key = serialization.load_pem_private_key(KEY_BLOCK.search(site.proxy)[0], None)  # type: ignore[index]
    locked = key.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.BestAvailableEncryption(b"secret"))  # fmt: skip
    res = run_helper(site, ["/usr/bin/id"], proxy=KEY_BLOCK.sub(locked, site.proxy))
    refused(res, 203, "proxy", "no readable unencrypted private key")


def test_the_chain_with_another_users_key(site: Site) -> None:
    alice_key, bob_key = KEY_BLOCK.search(site.proxy), KEY_BLOCK.search(site.other_proxy)
    assert alice_key and bob_key
    mixed = site.proxy.replace(alice_key[0], bob_key[0])
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket, proxy=mixed)
    refused(res, 203, "proxy", "private key is not the leaf certificate's")
    assert not burnt(site, ticket)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    size = bytes([n]) if n < 128 else bytes([0x80 | (n.bit_length() + 7) // 8]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + size + body


def _int(x: int) -> bytes:
    return _der(2, x.to_bytes(max(1, (x.bit_length() + 8) // 8), "big"))


def test_a_key_forged_from_the_public_parts_is_no_proof(site: Site) -> None:
    """X509_check_private_key compares only the public parts: an "RSA private key" made of the
    victim's n and e with junk for the private values passed it, so knowing a user's public
    chain was enough to become that user. The helper now makes the key sign and checks the
    signature with the leaf's public key."""
    leaf = x509.load_pem_x509_certificate(site.proxy)
    pub = leaf.public_key().public_numbers()  # type: ignore[union-attr]
    forged_der = _der(0x30, b"".join(_int(v) for v in (0, pub.n, pub.e, 1, 3, 5, 1, 1, 1)))
    forged = (b"-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(forged_der)
              + b"-----END RSA PRIVATE KEY-----\n")
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket,
                     proxy=KEY_BLOCK.sub(forged, site.proxy))
    refused(res, 203, "proxy", "no proof of possession")
    assert not burnt(site, ticket)


def test_another_whole_proxy_than_the_ticket_names(site: Site) -> None:
    ticket = site.ticket()  # for alice's leaf; bob presents his own, complete proxy
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket, proxy=site.other_proxy)
    refused(res, 203, "proxy", "issued for another proxy")
    assert not burnt(site, ticket)


# -- refusals: the target ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"uid": 0, "user": "root"}, "target uid 0"),
        ({"gid": 0}, "gid 0 below"),
        ({"uid": 999}, "target uid 999"),
        ({"sgids": [5]}, "secondary gid 5"),
    ],
)
def test_target_root_or_below_the_minimum(site: Site, change: dict[str, object],
                                          reason: str) -> None:  # fmt: skip
    ticket = site.ticket(**change)
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket)
    refused(res, 203, "target", reason)
    assert not burnt(site, ticket)


def test_target_name_whose_passwd_uid_differs(site: Site) -> None:
    ticket = site.ticket(user=POOL1, uid=site.ids[POOL2])
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket)
    refused(res, 203, "target", f"passwd uid of {POOL1} is {site.ids[POOL1]}")
    assert not burnt(site, ticket)


# -- refusals: configuration and installation ---------------------------------------------------


def test_config_not_root_owned(site: Site) -> None:
    os.chown(site.conf, site.ids[PILOT], -1)
    ticket = site.ticket()
    refused(run_helper(site, ["/usr/bin/id"], ticket=ticket), 202, "config", "owned by root")
    assert not burnt(site, ticket)


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_config_group_or_world_writable(site: Site, mode: int) -> None:
    os.chmod(site.conf, mode)
    res = run_helper(site, ["/usr/bin/id"])
    refused(res, 202, "config", f"group- or world-writable (owner uid 0, mode {mode:04o})")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"linger": "maybe"}, "linger must be yes or no"),
        ({"min_target_uid": "0"}, "min_target_uid must be"),
        ({"user_white_list": "*"}, "user_white_list: bad entry"),
        ({"preserve_env_variables": "TERM, LD_LIBRARY_PATH"}, "LD_LIBRARY_PATH is never"),
        ({"scas_ticket_key": "ed25519:0123456789abcdef:" + "A" * 43 + "="}, "is not the key's"),
        ({"scas_ticket_key": None}, "scas_ticket_key is missing"),
        ({"nonce_dir": "relative/dir"}, "nonce_dir must be an absolute path"),
    ],
)
def test_config_malformed_names_the_key(site: Site, overrides: dict[str, str | None],
                                        reason: str) -> None:  # fmt: skip
    site.write_conf(**overrides)
    refused(run_helper(site, ["/usr/bin/id"]), 202, "config", reason)


def test_config_legacy_and_unknown_keys_are_skipped(site: Site) -> None:
    """A site's existing glexec.conf (LCAS/LCMAPS keys, epilogue...) works unchanged: the helper
    skips keys it does not use (the front refuses unknown ones); a misspelt key of its own
    leaves the safe default (here: linger stays on, so the status record is written)."""
    site.write_conf(use_lcas="no", lcmaps_get_account_policy="glexec_get_account",
                    epilogue="/usr/sbin/epilogue", lingerie="no")  # fmt: skip
    res = run_helper(site, ["/usr/bin/id", "-u"])
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(site.ids[POOL1]) and res.status is not None


def test_config_missing_and_without_glexec_section(site: Site) -> None:
    site.conf.unlink()
    refused(run_helper(site, ["/usr/bin/id"]), 202, "config", "No such file")
    site.write_conf("[other]\nkey = value\n")
    refused(run_helper(site, ["/usr/bin/id"]), 202, "config", "no [glexec] section")


def test_helper_not_setuid(site: Site) -> None:
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket, helper=site.bin / "plain_helper")
    refused(res, 202, "install", "not installed setuid root")
    assert not burnt(site, ticket)


def test_shipped_example_config_is_understood(site: Site) -> None:
    """conf/glexec.conf (shared with the Python front) parses: only its placeholder key and
    its whitelist need changing, so a pilot outside `.dtpilot` is refused at the whitelist."""
    text = (REPO / "conf" / "glexec.conf").read_text()
    site.write_conf(text)
    refused(run_helper(site, ["/usr/bin/id"]), 202, "config", "scas_ticket_key: the key is not")
    text = re.sub(r"(?m)^scas_ticket_key = .*$", "scas_ticket_key = " + key_line(site.key), text)
    site.write_conf(text + f"nonce_dir = {site.nonces}\n")
    res = run_helper(site, ["/usr/bin/id"])  # log_destination = syslog: nothing in our file
    assert (res.code, res.status and res.status["phase"]) == (203, "whitelist"), res.stderr


def test_nonce_dir_not_root_only(site: Site) -> None:
    os.chmod(site.nonces, 0o755)
    try:
        refused(run_helper(site, ["/usr/bin/id"]), 202, "nonce", "need root 0700")
    finally:
        os.chmod(site.nonces, 0o700)


# -- refusals: environment and target proxy -------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "reason"),
    [
        ("LD_PRELOAD=/tmp/x.so", "LD_PRELOAD is never passed to a payload"),
        ("MALLOC_ARENA_MAX=2", "MALLOC_ARENA_MAX is never passed to a payload"),
        ("GCONV_PATH=/tmp", "GCONV_PATH is never passed to a payload"),
        ("PYTHONPATH=/tmp", "PYTHONPATH is never passed to a payload"),
        ("SECRET=1", "SECRET is not in preserve_env_variables"),
    ],
)
def test_forbidden_or_unlisted_environment(site: Site, variable: str, reason: str) -> None:
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket, options=("--env", variable))
    refused(res, 201, "environment", reason)
    assert not burnt(site, ticket)


def test_target_proxy_symlink(site: Site) -> None:
    victim = site.base / "tp-pool" / "victim"
    link = site.base / "tp-sticky" / "x509up"
    victim.write_bytes(b"untouched")
    link.symlink_to(victim)
    res = run_helper(site, ["/bin/true"], options=("--target-proxy", str(link)))
    refused(res, 201, "target-proxy", "is a symbolic link")
    assert victim.read_bytes() == b"untouched" and link.is_symlink()


def test_target_proxy_owned_by_another_user(site: Site) -> None:
    theirs = site.base / "tp-sticky" / "x509up"
    theirs.write_bytes(b"someone else's")
    os.chown(theirs, site.ids[POOL2], -1)
    res = run_helper(site, ["/bin/true"], options=("--target-proxy", str(theirs)))
    refused(res, 201, "target-proxy", f"exists (owner uid {site.ids[POOL2]})")
    assert theirs.read_bytes() == b"someone else's"


def test_target_proxy_in_a_directory_the_target_does_not_own(site: Site) -> None:
    target = site.base / "tp-pilot" / "x509up"
    res = run_helper(site, ["/bin/true"], options=("--target-proxy", str(target)))
    refused(res, 201, "target-proxy", "neither the target's own directory")
    assert not target.exists()


def test_working_directory_the_target_cannot_reach(site: Site) -> None:
    private = site.base / "tp-pilot"
    os.chmod(private, 0o700)  # the pilot's own: it may stand there, the pool account may not
    try:
        res = run_helper(site, ["/usr/bin/id"], cwd=str(private))
    finally:
        os.chmod(private, 0o755)
    refused(res, 201, "switch", f"working directory is not reachable by {POOL1}")


# -- the payload's status -----------------------------------------------------------------------


def test_payload_exiting_202_gives_204(site: Site) -> None:
    res = run_helper(site, [str(site.bin / "exit202")])
    assert res.code == 204
    assert res.status == {"phase": "payload", "exit": 202, "signal": 0,
                          "reason": "payload exited 202"}  # fmt: skip


def test_payload_not_executable_gives_126(site: Site) -> None:
    target = site.base / "tp-pool" / "x509up"
    res = run_helper(site, [str(site.bin / "not_executable")],
                     options=("--target-proxy", str(target)))  # fmt: skip
    refused(res, 126, "exec", "Permission denied")
    assert not target.exists()  # made, then removed


@pytest.mark.parametrize("command", ["/no/such/command", "id"])
def test_command_not_found_gives_201(site: Site, command: str) -> None:
    for options in ((), ("--exec",)):
        res = run_helper(site, [command], options=options)
        assert res.code == 201, res.stderr
        assert "command not found" in res.stderr or "No such file" in res.stderr


def _lingering_sleep(site: Site, seconds: str) -> subprocess.Popen[bytes]:
    """The installed helper, started by the pilot, lingering over `sleep seconds`."""
    r, w = os.pipe()
    os.write(w, site.ticket().encode())
    os.close(w)
    p_r, p_w = os.pipe()
    os.write(p_w, site.proxy)
    os.close(p_w)
    try:
        return subprocess.Popen(
            [str(site.helper), "--ticket-fd", str(r), "--proxy-fd", str(p_r), "--",
             "/usr/bin/sleep", seconds],
            user=PILOT, group=PILOT, extra_groups=[], pass_fds=(r, p_r), cwd="/", env={},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(r)
        os.close(p_r)


def test_sigterm_to_the_lingering_helper_reaches_the_payload(site: Site) -> None:
    proc = _lingering_sleep(site, "30")
    try:
        child = _wait_for_payload(proc.pid, "sleep")
        # the lingering helper keeps no root: real uid the pilot's, effective/saved the target's
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)[1].split()  # type: ignore[index]
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M)[1].split()  # type: ignore[index]
        pool, pilot = str(site.ids[POOL1]), str(site.ids[PILOT])
        assert uids == [pilot, pool, pool, pool] and "0" not in gids
        assert Path(f"/proc/{child}/status").read_text().count(f"\t{pool}") >= 4
        kill = subprocess.run(["/bin/sh", "-c", f"kill -TERM {proc.pid}"], user=PILOT,
                              group=PILOT, extra_groups=[], capture_output=True)  # fmt: skip
        assert kill.returncode == 0, kill.stderr  # the pilot itself may signal it
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 128 + signal.SIGTERM, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sigkill_of_the_lingering_helper_takes_the_payload_with_it(site: Site) -> None:
    """The pilot can SIGKILL its lingering helper (real uid the pilot's) but could not signal
    an orphaned payload running as the pool account: the payload has PR_SET_PDEATHSIG."""
    proc = _lingering_sleep(site, "31")
    try:
        child = _wait_for_payload(proc.pid, "sleep")
        kill = subprocess.run(["/bin/sh", "-c", f"kill -KILL {proc.pid}"], user=PILOT,
                              group=PILOT, extra_groups=[], capture_output=True)  # fmt: skip
        assert kill.returncode == 0, kill.stderr
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        gone = not Path(f"/proc/{child}").exists() or "Z" in Path(
            f"/proc/{child}/stat").read_text().split()[2]
        assert gone, "the payload outlived its helper"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _wait_for_payload(pid: int, comm: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children and Path(f"/proc/{children[0]}/comm").read_text().strip() == comm:
                return int(children[0])
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"payload {comm} did not start under {pid}")


# -- log-only mode and logging -------------------------------------------------------------------


def test_log_only_mode_switches_nothing_but_logs_the_mapping(site: Site) -> None:
    site.write_conf(mode="log-only")
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id"], ticket=ticket)
    assert res.code == 0, res.stderr
    uid, gid, _ = _ids_of(res.stdout)
    assert (uid, gid) == (site.ids[PILOT], pwd.getpwnam(PILOT).pw_gid)
    assert (f"log-only, no identity switch: would map: caller_uid={site.ids[PILOT]} "
            f"caller={PILOT} target={POOL1} uid={site.ids[POOL1]}") in res.log  # fmt: skip
    assert burnt(site, ticket)


def test_log_only_mode_without_setuid_bit(site: Site) -> None:
    """Log-only needs no setuid bit (then with syslog, and no nonce: that needs root)."""
    site.write_conf(mode="log-only", log_destination="syslog", log_file=None)
    ticket = site.ticket()
    res = run_helper(site, ["/usr/bin/id", "-u"], ticket=ticket, helper=site.bin / "plain_helper")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(site.ids[PILOT]) and not burnt(site, ticket)


def test_log_lines_cannot_be_split_by_caller_values(site: Site) -> None:
    res = run_helper(site, ["/bin/echo", "x\nINJECTED refused: fake"])
    assert res.code == 0, res.stderr
    lines = res.log.splitlines()
    assert len(lines) == 2 and all(" glexec-helper[" in line for line in lines)
    assert "x?INJECTED refused: fake" in lines[0]


# -- work-directory hand-over -----------------------------------------------------------------


@pytest.fixture
def pilot_dir(site: Site) -> Iterator[Path]:
    """A directory of the pilot's own, mode 0700, with a private file in it."""
    path = site.base / "pilot-home"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    (path / "secret").write_text("the pilot's own\n")
    for p in (path, path / "secret"):
        os.chown(p, site.ids[PILOT], pwd.getpwnam(PILOT).pw_gid)
    os.chmod(path / "secret", 0o640)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _with_workdir(site: Site, parent: Path, name: str, command: list[str],
                  **kw: object) -> Result:  # fmt: skip
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return run_helper(site, command, extra_fds=(fd,),  # type: ignore[arg-type]
                          options=("--workdir-fd", str(fd), "--workdir-name", name), **kw)
    finally:
        os.close(fd)


def _as_pilot(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, user=PILOT, group=PILOT, extra_groups=[], capture_output=True,
                          text=True, timeout=20, cwd="/")  # fmt: skip


def test_workdir_handover_works_both_ways(site: Site, pilot_dir: Path) -> None:
    """The payload runs in a new directory it owns; the pilot reads and cleans up what it left;
    the payload cannot see the pilot's other files."""
    script = ("pwd; umask; echo result > out.txt; mkdir sub && echo deep > sub/f; "
              "cat ../secret 2>/dev/null || echo no-secret; ls .. >/dev/null 2>&1 || echo no-ls")
    res = _with_workdir(site, pilot_dir, "job-1", ["/bin/sh", "-c", script])
    assert res.code == 0, res.stderr
    work = pilot_dir / "job-1"
    assert res.stdout.split() == [str(work), "0007", "no-secret", "no-ls"]
    st = work.lstat()
    pilot_gid = pwd.getpwnam(PILOT).pw_gid
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (site.ids[POOL1], pilot_gid, 0o2770)
    out = work / "out.txt"
    assert (out.stat().st_uid, out.stat().st_gid) == (site.ids[POOL1], pilot_gid)
    read = _as_pilot("/bin/cat", str(out), str(work / "sub" / "f"))
    assert read.returncode == 0 and read.stdout == "result\ndeep\n", read.stderr
    # the pilot can also put files there, and remove everything afterwards
    assert _as_pilot("/bin/sh", "-c", f"echo in > {work}/input && rm -r {work}").returncode == 0
    assert not work.exists() and (pilot_dir / "secret").exists()


def test_workdir_name_taken_by_a_symlink_is_refused(site: Site, pilot_dir: Path) -> None:
    victim = site.base / "tp-pool"  # a directory the pilot must not get root to touch
    before = victim.stat()
    os.symlink(victim, pilot_dir / "job-2")
    res = _with_workdir(site, pilot_dir, "job-2", ["/usr/bin/id"])
    refused(res, 201, "workdir", "cannot create workdir job-2: File exists")
    after = victim.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid,
                                                           before.st_mode)  # fmt: skip
    assert "uid=" not in res.stdout


def test_workdir_symlink_swapped_in_during_the_handover(site: Site, pilot_dir: Path) -> None:
    """A pilot process keeps replacing the new name with a symlink to a directory of its own
    while the helper runs: each run either hands over a fresh directory or refuses (201);
    root never changes the symlink's target, and no payload runs anywhere else. The window
    (mkdirat -> openat) is microseconds, so most runs win outright; the invariant is asserted
    whatever the interleaving. The deterministic case is the test above."""
    decoy = pilot_dir / "decoy"
    decoy.mkdir(mode=0o700)
    os.chown(decoy, site.ids[PILOT], -1)
    swapper = (f"end=$(( $(date +%s) + 8 )); while [ $(date +%s) -lt $end ]; do "
               f"for n in 0 1 2 3 4 5 6 7 8 9; do mv -T {pilot_dir}/w$n {pilot_dir}/gone$n "
               f"2>/dev/null && ln -sfn {decoy} {pilot_dir}/w$n; done; done")
    attacker = subprocess.Popen(["/bin/sh", "-c", swapper], user=PILOT, group=PILOT,
                                extra_groups=[], stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for n in range(10):
            res = _with_workdir(site, pilot_dir, f"w{n}", ["/bin/pwd"])
            assert res.code in (0, 201), res.stderr
            if res.code == 0:
                assert res.stdout.strip() in (f"{pilot_dir}/w{n}", f"{pilot_dir}/gone{n}")
            else:
                assert res.status is not None and res.status["phase"] == "workdir"
    finally:
        attacker.kill()
        attacker.wait()
    st = decoy.lstat()
    assert (st.st_uid, st.st_mode & 0o7777) == (site.ids[PILOT], 0o700)
    assert list(decoy.iterdir()) == []


def test_workdir_parent_not_the_callers(site: Site) -> None:
    ticket = site.ticket()
    res = _with_workdir(site, site.base / "tp-pool", "job-3", ["/usr/bin/id"], ticket=ticket)
    refused(res, 201, "workdir", "not a directory owned by the caller")
    assert not (site.base / "tp-pool" / "job-3").exists()


def test_workdir_options_go_together_and_descriptors_differ(site: Site) -> None:
    res = run_helper(site, ["/usr/bin/id"], options=("--workdir-name", "x"))
    refused(res, 201, "usage", "--workdir-fd and --workdir-name go together")
    res = run_helper(site, ["/usr/bin/id"], ticket=None,
                     options=("--ticket-fd", "5", "--workdir-fd", "5", "--workdir-name", "x"))
    refused(res, 201, "usage", "no other option names")
    res = run_helper(site, ["/usr/bin/id"], options=("--workdir-fd", "9", "--workdir-name", ".."))
    refused(res, 201, "usage", "bad option '--workdir-name'")
