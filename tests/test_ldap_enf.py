"""ldap_enf against a real slapd: memberUid / gidNumber written as the mapping says.

The module starts its own slapd (mdb database in a temp dir, loopback port,
RFC 2307 nis schema). The plugin binds as ``cn=lcmaps`` (not the rootdn),
which the slapd ACLs allow to write only memberUid and gidNumber, and not
memberUid of one group (to make a write fail after an earlier one worked).
Accounts are Debian's base ones: user ``daemon`` (uid 1), groups adm (4),
tty (5), disk (6).

A directory that cannot be used (unreachable, bind refused, timeout, a failed
search or write) is a fault: PluginUnavailable, MappingUnavailable from the
engine. What the directory says about the mapping (an entry missing or not
unique) and the id limits are a deny.
"""

from __future__ import annotations

import grp
import itertools
import os
import pwd
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

with warnings.catch_warnings():  # ldap3 2.9 uses pyasn1 names deprecated in 0.6
    warnings.filterwarnings("ignore", "(tag|type)Map is deprecated", DeprecationWarning)
    from ldap3 import BASE, MODIFY_ADD, Connection, Server

from lcmaps.evaluation import Engine, MappingUnavailable, map_credential
from lcmaps.plugin_api import (
    CredentialData,
    Mode,
    PluginInitError,
    PluginUnavailable,
    Request,
    RequestedAccount,
    RunContext,
)
from lcmaps.plugins.ldap_enf import LdapEnf
from lcmaps.policy_db import PolicyDbError, parse_policy_db

SLAPD = "/usr/sbin/slapd"
SCHEMA = "/etc/ldap/schema"
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root secret"
MANAGER_DN = f"cn=lcmaps,{SUFFIX}"
MANAGER_PW = "lcmaps pass word"  # spaces are part of the password, as in C
GROUPS = {"adm": 4, "tty": 5}  # in LDAP; disk (6) is deliberately not

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SLAPD), reason=f"{SLAPD} missing (apt install slapd)"),
    pytest.mark.skipif(not os.path.exists(f"{SCHEMA}/nis.schema"), reason="no nis.schema"),
]


def _local_ids_present() -> bool:
    try:
        return (pwd.getpwuid(1).pw_name == "daemon"
                and [grp.getgrnam(g).gr_gid for g in ("adm", "tty", "disk")] == [4, 5, 6])
    except KeyError:
        return False


SLAPD_CONF = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/nis.schema
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "{rootdn}"
rootpw "{rootpw}"
directory {d}/db
access to attrs=userPassword
    by anonymous auth
    by * none
access to dn.regex="^cn=tty,ou=Groups,ou=readonly,{suffix}$" attrs=memberUid
    by * read
access to attrs=memberUid,gidNumber
    by dn.exact="{manager}" write
    by * read
access to *
    by * read
"""


@dataclass
class Slapd:
    port: int
    proc: subprocess.Popen
    workdir: Path

    def admin(self) -> Connection:
        return Connection(Server("127.0.0.1", port=self.port), ROOT_DN, ROOT_PW,
                          auto_bind=True, receive_timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    if not _local_ids_present():
        pytest.skip("needs Debian's base accounts: daemon (uid 1), adm/tty/disk (4/5/6)")
    d = tmp_path_factory.mktemp("slapd")
    os.chmod(d, 0o755)
    (d / "db").mkdir(mode=0o700)
    conf = d / "slapd.conf"
    conf.write_text(SLAPD_CONF.format(schema=SCHEMA, d=d, suffix=SUFFIX, rootdn=ROOT_DN,
                                      rootpw=ROOT_PW, manager=MANAGER_DN))
    port = _free_port()
    log = open(d / "slapd.log", "wb")  # closed at teardown
    # -d 0 keeps slapd in the foreground (no fork) so we own its pid; no -u/-g: runs as us
    proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/",
                             "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail("slapd exited: " + (d / "slapd.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("slapd did not listen within 15 s")
                time.sleep(0.1)
        server = Slapd(port, proc, d)
        c = server.admin()
        assert c.add(SUFFIX, ["dcObject", "organization"], {"dc": "example", "o": "Example"})
        assert c.add(MANAGER_DN, ["organizationalRole", "simpleSecurityObject"],
                     {"cn": "lcmaps", "userPassword": MANAGER_PW})
        c.unbind()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Tree:
    """One test's own subtree: ou=<name> with ou=Groups (adm, tty) and ou=People (daemon)."""

    slapd: Slapd
    base: str

    @property
    def groups(self) -> str:
        return f"ou=Groups,{self.base}"

    @property
    def people(self) -> str:
        return f"ou=People,{self.base}"

    def read(self, dn: str, attr: str) -> list[str]:
        c = self.slapd.admin()
        assert c.search(dn, "(objectClass=*)", BASE, attributes=[attr, "modifyTimestamp",
                                                                 "entryCSN"])
        values = c.entries[0].entry_attributes_as_dict
        c.unbind()
        return [str(v) for v in values.get(attr, [])]

    def members(self, group: str) -> list[str]:
        return self.read(f"cn={group},{self.groups}", "memberUid")

    def user_gid(self) -> str:
        return self.read(f"uid=daemon,{self.people}", "gidNumber")[0]

    def snapshot(self) -> dict[str, list[str]]:
        """Every entry's entryCSN: any write changes it."""
        c = self.slapd.admin()
        c.search(self.base, "(objectClass=*)", attributes=["entryCSN"])
        snap = {e.entry_dn: [str(v) for v in e.entryCSN] for e in c.entries}
        c.unbind()
        return snap


_tree_ids = itertools.count(1)


def make_tree(slapd: Slapd, base: str) -> Tree:
    c = slapd.admin()
    assert c.add(base, ["organizationalUnit"]), c.result
    for ou in ("Groups", "People"):
        assert c.add(f"ou={ou},{base}", ["organizationalUnit"])
    for name, gid in GROUPS.items():
        assert c.add(f"cn={name},ou=Groups,{base}", ["posixGroup"], {"gidNumber": gid})
    assert c.add(f"uid=daemon,ou=People,{base}", ["account", "posixAccount"],
                 {"cn": "daemon", "uidNumber": 1, "gidNumber": 65534,
                  "homeDirectory": "/usr/sbin"})
    c.unbind()
    return Tree(slapd, base)


@pytest.fixture
def tree(slapd, request):
    if "readonly" in request.node.name:
        return make_tree(slapd, f"ou=readonly,{SUFFIX}")
    return make_tree(slapd, f"ou=t{next(_tree_ids)},{SUFFIX}")


@pytest.fixture
def pwfile(tmp_path) -> Path:
    p = tmp_path / "ldap.pw"
    p.write_text(MANAGER_PW + "\nsecond line ignored\n")
    p.chmod(0o400)
    return p


def ldap_args(tree: Tree, pw: Path, *, port: int | None = None, extra: str = "") -> str:
    return (f"-maxuid 1 -maxpgid 1 -maxsgid 32 -hostname 127.0.0.1 "
            f"-port {port or tree.slapd.port} -dn_manager {MANAGER_DN} -ldap_pw {pw} "
            f"-sb_groups {tree.groups} -sb_user {tree.people} -timeout 5 {extra}")


def engine(tmp_path: Path, ldap: str, *, pgid: int = 1) -> Engine:
    """dummy_good gives uid 1 + pgid; voms_localgroup turns FQANs into secondary gids."""
    groupmap = tmp_path / "groupmapfile"
    groupmap.write_text('"/dteam/adm" adm\n"/dteam/tty" tty\n"/dteam/disk" disk\n')
    db = (
        "path = /usr/lib/lcmaps\n"
        f'good = "lcmaps_dummy_good.mod --dummy-uid 1 --dummy-gid {pgid}"\n'
        f'groups = "lcmaps_voms_localgroup.mod -groupmapfile {groupmap} '
        '--map-to-secondary-groups"\n'
        f'ldap = "lcmaps_ldap_enf.mod {ldap}"\n'
        "mapping:\ngood -> groups\ngroups -> ldap\n"
    )
    return Engine(parse_policy_db(db, str(tmp_path / "lcmaps.db")))


DN = "/DC=org/DC=example/CN=Alice"
ADM_TTY = ["/dteam/adm", "/dteam/tty"]


def test_ldap_enf_adds_memberuid_and_sets_gidnumber(tree, pwfile, tmp_path):
    r = map_credential(engine(tmp_path, ldap_args(tree, pwfile)), DN, ADM_TTY)
    assert (r.decision, r.uid, r.pgid, r.sgids) == ("permit", 1, 1, (4, 5)), r.reason
    assert tree.members("adm") == ["daemon"]
    assert tree.members("tty") == ["daemon"]
    assert tree.user_gid() == "1"


def test_ldap_enf_only_mapped_groups_are_touched(tree, pwfile, tmp_path):
    r = map_credential(engine(tmp_path, ldap_args(tree, pwfile)), DN, ["/dteam/tty"])
    assert r.permitted, r.reason
    assert tree.members("tty") == ["daemon"]
    assert tree.members("adm") == []


def test_ldap_enf_second_run_writes_nothing(tree, pwfile, tmp_path):
    e = engine(tmp_path, ldap_args(tree, pwfile))
    assert map_credential(e, DN, ADM_TTY).permitted
    before = tree.snapshot()
    r = map_credential(e, DN, ADM_TTY)
    assert r.permitted, r.reason
    assert tree.snapshot() == before
    assert tree.members("adm") == ["daemon"]


def test_ldap_enf_keeps_existing_members(tree, pwfile, tmp_path):
    c = tree.slapd.admin()
    assert c.modify(f"cn=adm,{tree.groups}", {"memberUid": [(MODIFY_ADD, ["bob", "carol"])]})
    c.unbind()
    assert map_credential(engine(tmp_path, ldap_args(tree, pwfile)), DN, ADM_TTY).permitted
    assert sorted(tree.members("adm")) == ["bob", "carol", "daemon"]


def test_ldap_enf_missing_group_denies_and_changes_nothing(tree, pwfile, tmp_path):
    before = tree.snapshot()
    r = map_credential(engine(tmp_path, ldap_args(tree, pwfile)), DN, [*ADM_TTY, "/dteam/disk"])
    assert r.decision == "deny"
    assert "gid(s) 6" in r.reason and "nothing changed" in r.reason
    assert tree.snapshot() == before
    assert tree.user_gid() == "65534"


def test_ldap_enf_missing_group_skipped_without_require_all(tree, pwfile, tmp_path):
    ldap = ldap_args(tree, pwfile, extra="-require_all_groups no")
    r = map_credential(engine(tmp_path, ldap), DN, [*ADM_TTY, "/dteam/disk"])
    assert r.permitted, r.reason
    assert r.sgids == (4, 5, 6)
    assert tree.members("adm") == tree.members("tty") == ["daemon"]


def test_ldap_enf_missing_user_entry_denies_and_changes_nothing(tree, pwfile, tmp_path):
    c = tree.slapd.admin()
    assert c.delete(f"uid=daemon,{tree.people}")
    c.unbind()
    before = tree.snapshot()
    r = map_credential(engine(tmp_path, ldap_args(tree, pwfile)), DN, ADM_TTY)
    assert r.decision == "deny"
    assert "0 posixAccount entries with uid=daemon" in r.reason
    assert tree.snapshot() == before


def test_ldap_enf_failed_write_is_undone_and_unavailable_readonly(tree, pwfile, tmp_path):
    # the ACL forbids memberUid writes on cn=tty of this subtree: adm and gidNumber
    # are written first, then must be rolled back; a refused write is a fault, not a deny
    before = tree.snapshot()
    with pytest.raises(MappingUnavailable) as err:
        map_credential(engine(tmp_path, ldap_args(tree, pwfile)), DN, ADM_TTY)
    reason = err.value.reason
    assert reason.startswith(f"lcmaps_ldap_enf.mod: lcmaps_ldap_enf: LDAP server "
                             f"127.0.0.1:{tree.slapd.port}: changing memberUid of "
                             f"cn=tty,{tree.groups} failed: insufficientAccessRights")
    assert f"undone: gidNumber of uid=daemon,{tree.people}; memberUid of cn=adm" in reason
    assert tree.members("adm") == tree.members("tty") == []
    assert tree.user_gid() == "65534"
    assert set(tree.snapshot()) == set(before)


@pytest.mark.parametrize(
    ("limits", "fqans", "needle"),
    [
        ("-maxsgid 1", ADM_TTY, "2 secondary gids, at most 1 allowed"),
        ("-maxpgid 0", ADM_TTY, "1 primary gids, at most 0 allowed"),
        ("-maxuid 0", ADM_TTY, "1 uids, at most 0 allowed"),
    ],
)
def test_ldap_enf_limits_deny_before_writing(tree, pwfile, tmp_path, limits, fqans, needle):
    ldap = ldap_args(tree, pwfile).replace("-maxuid 1 -maxpgid 1 -maxsgid 32", limits)
    before = tree.snapshot()
    r = map_credential(engine(tmp_path, ldap), DN, fqans)
    assert r.decision == "deny" and needle in r.reason
    assert tree.snapshot() == before


def test_ldap_enf_limits_at_the_maximum_pass(tree, pwfile, tmp_path):
    ldap = ldap_args(tree, pwfile).replace("-maxsgid 32", "-maxsgid 2")
    assert map_credential(engine(tmp_path, ldap), DN, ADM_TTY).permitted


def plugin_run(tree: Tree, pw: Path, *, port: int | None = None, extra: str = "") -> bool:
    """The plugin's own run(), as the engine calls it after dummy_good + voms_localgroup."""
    plugin = LdapEnf(["lcmaps_ldap_enf.mod", *ldap_args(tree, pw, port=port,
                                                        extra=extra).split()])
    ctx = RunContext(Request(DN), CredentialData(uids=[1], pgids=[1], sgids=[4, 5]))
    return plugin.run(ctx)


def test_ldap_enf_wrong_password_is_unavailable(tree, tmp_path):
    pw = tmp_path / "wrong.pw"
    pw.write_text("not the password\n")
    pw.chmod(0o400)
    with pytest.raises(PluginUnavailable) as err:
        plugin_run(tree, pw)
    assert err.value.reason == (f"lcmaps_ldap_enf: cannot bind to LDAP server "
                                f"127.0.0.1:{tree.slapd.port} as {MANAGER_DN}: "
                                "invalidCredentials")
    assert tree.members("adm") == []


def test_ldap_enf_ldap_down_is_unavailable(tree, pwfile):
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(PluginUnavailable) as err:
        plugin_run(tree, pwfile, port=port)
    assert err.value.reason.startswith(
        f"lcmaps_ldap_enf: cannot bind to LDAP server 127.0.0.1:{port} as {MANAGER_DN}: ")
    assert "\n" not in err.value.reason
    assert time.monotonic() - t0 < 5


def test_ldap_enf_ldap_down_makes_the_mapping_unavailable(tree, pwfile, tmp_path):
    # through the engine: Indeterminate for the server, never a deny
    port = _free_port()
    with pytest.raises(MappingUnavailable) as err:
        map_credential(engine(tmp_path, ldap_args(tree, pwfile, port=port)), DN, ADM_TTY)
    assert err.value.reason.startswith(
        f"lcmaps_ldap_enf.mod: lcmaps_ldap_enf: cannot bind to LDAP server 127.0.0.1:{port} "
        f"as {MANAGER_DN}: ")
    assert tree.members("adm") == tree.members("tty") == []


def test_ldap_enf_hung_server_times_out(tree, pwfile, tmp_path):
    # a socket that completes the TCP handshake (backlog) but never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        ldap = ldap_args(tree, pwfile, port=port).replace("-timeout 5", "-timeout 1")
        e = engine(tmp_path, ldap)
        t0 = time.monotonic()
        with pytest.raises(MappingUnavailable) as err:
            map_credential(e, DN, ADM_TTY)
        elapsed = time.monotonic() - t0
    assert f"cannot bind to LDAP server 127.0.0.1:{port}" in err.value.reason
    assert 0.9 < elapsed < 4, elapsed


def _ber_message_id(request: bytes) -> bytes:
    """The encoded messageID of an LDAPMessage (SEQUENCE, then INTEGER)."""
    i = 2 + (request[1] & 0x7F if request[1] & 0x80 else 0)
    assert request[0] == 0x30 and request[i] == 0x02, request[:16]
    return request[i:i + 2 + request[i + 1]]


@pytest.fixture(params=["closes", "hangs", "busy"])
def flaky_server(request) -> Iterator[tuple[int, str]]:
    """A server that accepts any bind, then closes the connection, never answers the
    first search or answers it with resultCode busy (51)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    def reply(conn: socket.socket, msgid: bytes, op: bytes) -> None:
        conn.sendall(bytes([0x30, len(msgid) + len(op)]) + msgid + op)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            reply(conn, _ber_message_id(conn.recv(4096)),
                  bytes([0x61, 7, 0x0A, 1, 0, 0x04, 0, 0x04, 0]))  # bindResponse: success
            search = conn.recv(4096)
            if request.param == "busy":  # searchResDone: busy
                reply(conn, _ber_message_id(search),
                      bytes([0x65, 7, 0x0A, 1, 51, 0x04, 0, 0x04, 0]))
            if request.param != "closes":
                done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], request.param
    finally:
        done.set()
        thread.join(10)
        listener.close()


def test_ldap_enf_server_failing_after_bind_is_unavailable(tree, pwfile, flaky_server):
    port, how = flaky_server
    t0 = time.monotonic()
    with pytest.raises(PluginUnavailable) as err:
        plugin_run(tree, pwfile, port=port, extra="-timeout 1")
    assert err.value.reason.startswith(f"lcmaps_ldap_enf: LDAP server 127.0.0.1:{port}")
    assert "\n" not in err.value.reason
    if how == "busy":
        assert err.value.reason == (
            f"lcmaps_ldap_enf: LDAP server 127.0.0.1:{port}: search for "
            f"(&(objectClass=posixAccount)(uid=daemon)) under {tree.people} failed: busy; "
            "nothing changed")
    assert time.monotonic() - t0 < 4


def test_ldap_enf_ambiguous_group_denies_and_changes_nothing(tree, pwfile, tmp_path):
    c = tree.slapd.admin()
    assert c.add(f"cn=adm2,{tree.groups}", ["posixGroup"], {"gidNumber": 4})
    c.unbind()
    before = tree.snapshot()
    r = map_credential(engine(tmp_path, ldap_args(tree, pwfile)), DN, ADM_TTY)
    assert r.decision == "deny"
    assert "2 posixGroup entries with gidNumber 4" in r.reason
    assert tree.snapshot() == before


def localaccount_engine(tmp_path: Path, ldap: str) -> Engine:
    gridmap = tmp_path / "grid-mapfile"
    gridmap.write_text(f'"{DN}" daemon\n')
    db = (
        "path = /usr/lib/lcmaps\n"
        f'local = "lcmaps_localaccount.mod -gridmapfile {gridmap}"\n'
        f'ldap = "lcmaps_ldap_enf.mod {ldap}"\n'
        "mapping:\nlocal -> ldap\n"
    )
    return Engine(parse_policy_db(db, str(tmp_path / "lcmaps.db")))


def test_ldap_enf_after_localaccount_sets_primary_group(tree, pwfile, tmp_path):
    # daemon's groups are just gid 1, which has no posixGroup in this tree
    e = localaccount_engine(tmp_path, ldap_args(tree, pwfile))
    r = map_credential(e, DN)
    assert r.decision == "deny" and "gid(s) 1;" in r.reason
    assert tree.user_gid() == "65534"
    e = localaccount_engine(tmp_path, ldap_args(tree, pwfile, extra="-require_all_groups no"))
    r = map_credential(e, DN)
    assert (r.decision, r.username, r.pgid, r.sgids) == ("permit", "daemon", 1, (1,))
    assert tree.user_gid() == "1"


def test_ldap_enf_runs_in_verification_mode_too(tree, pwfile, tmp_path):
    # like C (plugin_verify is plugin_run): the directory is brought in line
    e = localaccount_engine(tmp_path, ldap_args(tree, pwfile, extra="-require_all_groups no"))
    r = map_credential(e, DN, mode=Mode.VERIFICATION, requested=RequestedAccount(uid=1))
    assert r.permitted, r.reason
    assert tree.user_gid() == "1"


@pytest.mark.parametrize("mode", [0o440, 0o600, 0o404, 0o700])
def test_ldap_enf_password_file_mode_is_init_error(tree, pwfile, tmp_path, mode):
    pwfile.chmod(mode)
    with pytest.raises(PolicyDbError) as err:
        engine(tmp_path, ldap_args(tree, pwfile))
    assert f"-ldap_pw file {pwfile} has mode {mode:04o}, must be 0400 or stricter" \
        in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_ldap_enf_password_file_owner_is_init_error(pwfile):
    os.chown(pwfile, 1, 1)
    with pytest.raises(PluginInitError, match="owned by uid 1, not by the process user 0"):
        LdapEnf(["x.mod", "-hostname", "h", "-port", "1", "-dn_manager", "cn=m",
                 "-ldap_pw", str(pwfile), "-sb_groups", "ou=g", "-sb_user", "ou=u"])


def _argv(pw: Path, **over: str | None) -> list[str]:
    opts: dict[str, str | None] = {"-hostname": "h", "-port": "389", "-dn_manager": "cn=m",
                                   "-ldap_pw": str(pw), "-sb_groups": "ou=g",
                                   "-sb_user": "ou=u"}
    opts.update(over)
    argv = ["/usr/lib/lcmaps/lcmaps_ldap_enf.mod"]
    for k, v in opts.items():
        if v is not None:
            argv += [k, v]
    return argv


def test_ldap_enf_init_accepts_c_spellings(pwfile):
    p = LdapEnf(_argv(pwfile, **{"-MAXUID": "1", "-MAXPGID": "1", "-MAXSGID": "32",
                                 "-require_all_groups": "no", "-timeout": "0"}))
    assert (p.maxuid, p.maxpgid, p.maxsgid, p.require_all_groups) == (1, 1, 32, False)
    assert p.password == MANAGER_PW


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"-hostname": None}, "option -hostname is required"),
        ({"-port": None}, "option -port is required"),
        ({"-ldap_pw": None}, "option -ldap_pw is required"),
        ({"-sb_user": None}, "option -sb_user is required"),
        ({"-port": "38x9"}, "-port needs a number >= 0, got '38x9'"),
        ({"-timeout": "-1"}, "-timeout needs a number >= 0, got '-1'"),
        ({"-maxsgid": "65537"}, "-maxsgid 65537 exceeds the system maximum"),
        ({"-require_all_groups": "YES"}, 'use "yes" or "no" for option -require_all_groups'),
        ({"-sb_groups": ""}, "option -sb_groups needs to be followed by a search base"),
        ({"-ldap_pw": "/nonexistent/pw"}, "cannot open -ldap_pw file /nonexistent/pw"),
        ({"--timeout": "3"}, "unknown argument '--timeout'"),
    ],
)
def test_ldap_enf_init_refuses_bad_options(pwfile, over, needle):
    with pytest.raises(PluginInitError) as err:
        LdapEnf(_argv(pwfile, **over))
    assert needle in err.value.reason


def test_ldap_enf_init_refuses_repeated_max_option(pwfile):
    with pytest.raises(PluginInitError, match="option -maxuid given twice"):
        LdapEnf([*_argv(pwfile), "-maxuid", "1", "-maxuid", "2"])


def test_ldap_enf_init_refuses_empty_password_file(tmp_path):
    pw = tmp_path / "empty.pw"
    pw.write_text("\nsecret on line two\n")
    pw.chmod(0o400)
    with pytest.raises(PluginInitError, match="holds no password on its first line"):
        LdapEnf(_argv(pw))



@pytest.mark.compat
@pytest.mark.skipif(os.geteuid() != 0, reason="C ldap_enf runs only as root")
def test_ldap_enf_compat_c_plugin_cannot_bind_to_slapd_2_5(slapd, pwfile, tmp_path,
                                                             tmp_path_factory):
    """Debian's C lcmaps_ldap_enf.mod and ours, same policy, twin subtrees of one slapd.

    C calls ldap_init() without asking for LDAPv3, so libldap binds with
    LDAPv2, which slapd 2.5 refuses ("historical protocol version"); with
    -timeout set C ignores the bind result and writes anonymously, which
    fails. So C denies and changes nothing; ours (LDAPv3) permits and writes."""
    from tests.compat.oracle import build_oracle, missing_reason, run_oracle

    if (why := missing_reason()) or not os.path.exists("/usr/lib/lcmaps/lcmaps_ldap_enf.mod"):
        pytest.skip(why or "lcmaps-plugins-basic-ldap not installed")
    oracle = build_oracle(tmp_path_factory.getbasetemp() / "ldap_enf_oracle")
    c_tree = make_tree(slapd, f"ou=t{next(_tree_ids)},{SUFFIX}")
    py_tree = make_tree(slapd, f"ou=t{next(_tree_ids)},{SUFFIX}")
    py = map_credential(engine(tmp_path, ldap_args(py_tree, pwfile)), DN, ADM_TTY)
    (tmp_path / "lcmaps.db").write_text(
        "path = /usr/lib/lcmaps\n"
        'good = "lcmaps_dummy_good.mod --dummy-uid 1 --dummy-gid 1"\n'
        f'groups = "lcmaps_voms_localgroup.mod -groupmapfile {tmp_path / "groupmapfile"} '
        '--map-to-secondary-groups"\n'
        f'ldap = "lcmaps_ldap_enf.mod {ldap_args(c_tree, pwfile)}"\n'
        "mapping:\ngood -> groups\ngroups -> ldap\n")
    _, c_out = run_oracle(oracle, "--no-lcas", "--dn", DN, "--fqan", ADM_TTY[0],
                          "--fqan", ADM_TTY[1], config_dir=tmp_path)
    c_log = (tmp_path / "oracle.log").read_text()
    assert c_out["decision"] == "deny"
    assert "ldap_modify_ext_s failed: Strong(er) authentication required" in c_log
    assert (c_tree.members("adm"), c_tree.members("tty"), c_tree.user_gid()) == ([], [], "65534")
    assert py.permitted, py.reason
    assert (py_tree.members("adm"), py_tree.members("tty"), py_tree.user_gid()) == \
        (["daemon"], ["daemon"], "1")
