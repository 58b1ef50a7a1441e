"""C vs Python for LCMAPS plugin options (issue 3), one case per option.

Each case writes its own ``lcmaps.db`` (and, where needed, mapfiles) into two
separate copies of the compat site, runs the real C oracle on one and
``lcmaps-run`` on the other with the same input, and asserts the same exit
code, the same compared result fields and the same gridmapdir/groupmapdir
listings. The C decision is pinned too, so a case whose option stops mattering
shows up. DN+FQAN input wherever no certificate is needed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from oracle import run_oracle
from sitecfg import compared, cred_env, make_site, run_python  # type: ignore[attr-defined]

from leases.gridmapdir import GridmapDir

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
EVE = "/DC=org/DC=example/O=Users/CN=Eve Intruder"
FRANK = "/DC=org/DC=example/O=Users/CN=Frank Local"
ALICE_LEASE = "%2fdc%3dorg%2fdc%3dexample%2fo%3dusers%2fcn%3dalice%20smith"
DTEAM = "/dteam/Role=NULL/Capability=NULL"
PROD = "/dteam/production/Role=NULL/Capability=NULL"
ADMIN = "/dteam/Role=admin/Capability=NULL"
BANNED = "/dteam/Role=banned/Capability=NULL"
OTHER = "/other/Role=NULL/Capability=NULL"

POOL_GROUPS = ("cpgrp001", "cpgrp002")
GMF = "-gridmapfile {cfg}/grid-mapfile"
GMD = "-gridmapdir {gmd}"
GRPMF = "-groupmapfile {cfg}/groupmapfile"


@dataclass(frozen=True)
class Case:
    """One option case: plugin lines + policy body, input, what C decides."""

    plugins: str
    policy: str
    args: tuple[str, ...]
    decision: str
    files: dict[str, str] = field(default_factory=dict)
    entries: tuple[str, ...] | None = None
    setup: Callable[[Path], None] | None = None
    pem: str | None = None  # creds user/name, for cases that need a certificate
    lease: str | None = None  # a lease name C must leave behind (gridmapdir/groupmapdir)


def _db(case: Case, cfg: Path, gmd: Path, certdir: Path) -> str:
    body = case.plugins.format(cfg=cfg, gmd=gmd, certdir=certdir)
    return f"path = /usr/lib/lcmaps\n\n{body}\n\np:\n{case.policy}\n"


def _steal_lease(pool: str, dn: str) -> Callable[[Path], None]:
    """A lease for ``dn`` in another pool, as a site changing a mapping leaves it."""

    def setup(gmd: Path) -> None:
        GridmapDir(gmd).acquire(pool, dn)

    return setup


POOL = f'pool = "lcmaps_poolaccount.mod" "{GMF}" "{GMD}"'
GOOD = 'good = "lcmaps_dummy_good.mod"'
LOCAL = f'local = "lcmaps_localaccount.mod" "{GMF}"'
GROUPMAP_MIXED = '"/dteam/production/*" cprod\n"/dteam/Role=admin/*" cadmin\n'

CASES: dict[str, Case] = {
    # --- poolaccount ----------------------------------------------------------
    "pool_maxmap2_counter1": Case(
        f'{POOL} "-max_mappings_per_credential 2"\n{GOOD}',
        "pool -> good", ("--dn", ALICE, "--mapcounter", "1"), "permit",
        lease=f"{ALICE_LEASE}:mapcount=0001"),
    "pool_maxmap2_counter2": Case(
        f'{POOL} "-max_mappings_per_credential 2"\n{GOOD}',
        "pool -> good", ("--dn", ALICE, "--mapcounter", "2"), "permit",
        lease=f"{ALICE_LEASE}:mapcount=0002"),
    "pool_maxmap2_counter3": Case(
        f'{POOL} "-max_mappings_per_credential 2"\n{GOOD}',
        "pool -> good", ("--dn", ALICE, "--mapcounter", "3"), "deny"),
    "pool_maxmap2_no_counter": Case(
        f'{POOL} "-max_mappings_per_credential 2"\n{GOOD}',
        "pool -> good", ("--dn", ALICE), "permit", lease=ALICE_LEASE),
    "pool_strict_prefix_default": Case(
        f"{POOL}\n{GOOD}", "pool -> good", ("--dn", ALICE), "deny",
        files={"grid-mapfile": f'"{ALICE}" .cd\n'},
        entries=("cpoolx", "cdteam001", "cdteam002")),
    "pool_strict_prefix_no": Case(
        f'{POOL} "-strict_poolprefix_match no"\n{GOOD}', "pool -> good", ("--dn", ALICE),
        "permit", files={"grid-mapfile": f'"{ALICE}" .cd\n'},
        entries=("cpoolx", "cdteam001", "cdteam002")),
    "pool_strict_prefix_no_cpoolx": Case(
        f'{POOL} "-strict_poolprefix_match no"\n{GOOD}', "pool -> good", ("--dn", ALICE),
        "permit", files={"grid-mapfile": f'"{ALICE}" .cpool\n'},
        entries=("cpool001", "cpoolx")),
    "pool_wildcard_default": Case(
        f"{POOL}\n{GOOD}", "pool -> good", ("--dn", ALICE), "permit",
        files={"grid-mapfile": '"/DC=org/DC=example/O=Users/CN=Alice*" .cpool\n'}),
    "pool_no_wildcard": Case(
        f'{POOL} "-no_wildcard"\n{GOOD}', "pool -> good", ("--dn", ALICE), "deny",
        files={"grid-mapfile": '"/DC=org/DC=example/O=Users/CN=Alice*" .cpool\n'}),
    "pool_inconsistent_lease": Case(
        f"{POOL}\n{GOOD}", "pool -> good", ("--dn", ALICE), "deny",
        setup=_steal_lease("cdteam", ALICE)),
    "pool_override_inconsistency": Case(
        f'{POOL} "-override_inconsistency"\n{GOOD}', "pool -> good", ("--dn", ALICE),
        "permit", setup=_steal_lease("cdteam", ALICE)),
    # --- ban_dn / ban_fqan ----------------------------------------------------
    "ban_dn_wildcard": Case(
        f'ban = "lcmaps_ban_dn.mod" "-banmapfile {{cfg}}/ban_users.db"\n{LOCAL}\n{GOOD}',
        "ban -> local\nlocal -> good", ("--dn", EVE), "deny",
        files={"grid-mapfile": f'"{EVE}" cjohn\n'}),
    "ban_dn_no_wildcard": Case(
        f'ban = "lcmaps_ban_dn.mod" "-banmapfile {{cfg}}/ban_users.db" "-no_wildcard"\n'
        f"{LOCAL}\n{GOOD}",
        "ban -> local\nlocal -> good", ("--dn", EVE), "permit",
        files={"grid-mapfile": f'"{EVE}" cjohn\n'}),
    "ban_fqan_wildcard": Case(
        f'ban = "lcmaps_ban_fqan.mod" "-banmapfile {{cfg}}/ban_fqans.db"\n{LOCAL}\n{GOOD}',
        "ban -> local\nlocal -> good", ("--dn", FRANK, "--fqan", BANNED), "deny"),
    "ban_fqan_no_wildcard": Case(
        f'ban = "lcmaps_ban_fqan.mod" "-banmapfile {{cfg}}/ban_fqans.db" "-no_wildcard"\n'
        f"{LOCAL}\n{GOOD}",
        "ban -> local\nlocal -> good", ("--dn", FRANK, "--fqan", BANNED), "permit"),
    "ban_fqan_no_fqans": Case(
        f'ban = "lcmaps_ban_fqan.mod" "-banmapfile {{cfg}}/ban_fqans.db"\n{LOCAL}\n{GOOD}',
        "ban -> local\nlocal -> good", ("--dn", FRANK), "permit"),
}


def _lgrp(opts: str) -> str:
    return f'grp = "lcmaps_voms_localgroup.mod" "{GRPMF}"{opts}\n{LOCAL}\n{GOOD}'


GRP_POLICY = "grp -> local\nlocal -> good"
CASES.update({
    # --- voms_localgroup ------------------------------------------------------
    "localgroup_default": Case(
        _lgrp(""), GRP_POLICY, ("--dn", FRANK, "--fqan", PROD, "--fqan", ADMIN), "permit"),
    "localgroup_unmapped_default": Case(
        _lgrp(""), GRP_POLICY, ("--dn", FRANK, "--fqan", PROD, "--fqan", OTHER), "permit",
        files={"groupmapfile": GROUPMAP_MIXED}),
    "localgroup_mapall": Case(
        _lgrp(' "-mapall"'), GRP_POLICY, ("--dn", FRANK, "--fqan", PROD, "--fqan", OTHER),
        "deny", files={"groupmapfile": GROUPMAP_MIXED}),
    "localgroup_mapall_all_mapped": Case(
        _lgrp(' "-mapall"'), GRP_POLICY, ("--dn", FRANK, "--fqan", PROD, "--fqan", ADMIN),
        "permit", files={"groupmapfile": GROUPMAP_MIXED}),
    "localgroup_mapmin2_one": Case(
        _lgrp(' "-mapmin 2"'), GRP_POLICY, ("--dn", FRANK, "--fqan", PROD, "--fqan", OTHER),
        "deny", files={"groupmapfile": GROUPMAP_MIXED}),
    "localgroup_mapmin2_two": Case(
        _lgrp(' "-mapmin 2"'), GRP_POLICY, ("--dn", FRANK, "--fqan", PROD, "--fqan", ADMIN),
        "permit", files={"groupmapfile": GROUPMAP_MIXED}),
    "localgroup_map_to_secondary": Case(
        _lgrp(' "--map-to-secondary-groups"'), GRP_POLICY,
        ("--dn", FRANK, "--fqan", PROD, "--fqan", ADMIN), "permit"),
})


def _vla(opts: str) -> str:
    return (f'grp = "lcmaps_voms_localgroup.mod" "{GRPMF}" "-mapmin 0"\n'
            f'vla = "lcmaps_voms_localaccount.mod" "{GMF}"{opts}\n{GOOD}')


VLA_GMF = {"grid-mapfile": '"/dteam/production/*" cjohn\n"/dteam/*" cextra001\n'}
VLA_POLICY = "grp -> vla\nvla -> good"
VLA_ARGS = ("--dn", ALICE, "--fqan", PROD, "--fqan", ADMIN)
CASES.update({
    # --- voms_localaccount ----------------------------------------------------
    "vla_default": Case(_vla(""), VLA_POLICY, VLA_ARGS, "permit", files=VLA_GMF),
    "vla_use_voms_gid": Case(
        _vla(' "--use-voms-gid"'), VLA_POLICY, VLA_ARGS, "permit", files=VLA_GMF),
    "vla_primary_as_secondary": Case(
        _vla(' "--add-primary-gid-as-secondary-gid-from-mapped-account"'), VLA_POLICY,
        VLA_ARGS, "permit", files=VLA_GMF),
    "vla_voms_gid_primary_as_secondary": Case(
        _vla(' "--use-voms-gid" "--add-primary-gid-as-secondary-gid-from-mapped-account"'),
        VLA_POLICY, VLA_ARGS, "permit", files=VLA_GMF),
    "vla_voms_gid_without_localgroup": Case(
        _vla(' "--use-voms-gid"'), "vla -> good", VLA_ARGS, "deny", files=VLA_GMF),
    "vla_no_secondary_from_account": Case(
        _vla(' "--do-not-add-secondary-gids-from-mapped-account"'), VLA_POLICY, VLA_ARGS,
        "permit", files=VLA_GMF),
})


def _vpa(opts: str) -> str:
    return (f'grp = "lcmaps_voms_localgroup.mod" "{GRPMF}" "-mapmin 0"\n'
            f'vpa = "lcmaps_voms_poolaccount.mod" "{GMF}" "{GMD}"{opts}\n{GOOD}')


VPA_POLICY = "grp -> vpa\nvpa -> good"
VPA_ARGS = ("--dn", ALICE, "--fqan", DTEAM, "--fqan", PROD)
CASES.update({
    # --- voms_poolaccount -----------------------------------------------------
    "vpa_default": Case(_vpa(""), VPA_POLICY, VPA_ARGS, "permit",
                        lease=f"{ALICE_LEASE}:cdteam:cprod"),
    "vpa_no_secondary_gids": Case(
        _vpa(' "--do-not-use-secondary-gids"'), VPA_POLICY, VPA_ARGS, "permit",
        lease=f"{ALICE_LEASE}:cdteam"),
    "vpa_use_account_gid": Case(
        _vpa(' "--use-account-gid"'), VPA_POLICY, VPA_ARGS, "permit",
        lease=f"{ALICE_LEASE}:cdteam:cprod"),
    # --- voms_poolgroup -------------------------------------------------------
    "poolgroup_lease": Case(
        'vpg = "lcmaps_voms_poolgroup.mod" "-groupmapfile {cfg}/groupmapfile"'
        ' "-groupmapdir {cfg}/../groupmapdir"\n'
        f"{LOCAL}\n{GOOD}",
        "vpg -> local\nlocal -> good", ("--dn", FRANK, "--fqan", DTEAM), "permit",
        files={"groupmapfile": '"/dteam/*" .cpgrp\n'},
        lease="%2fdteam%2frole%3dnull%2fcapability%3dnull"),
    # --- dummy_good -----------------------------------------------------------
    "dummy_good_ids": Case(
        'good = "lcmaps_dummy_good.mod" "--dummy-uid 4242" "--dummy-gid 4343" '
        '"--dummy-sec-gid 4444"\nban = "lcmaps_ban_dn.mod" "-banmapfile {cfg}/ban_users.db"',
        "good -> ban", ("--dn", ALICE), "permit"),
})


def _verify(opt: str) -> str:
    return (f'verify = "lcmaps_verify_proxy.mod" "-certdir {{certdir}}"{opt}\n'
            f"{LOCAL}\n{GOOD}")


VERIFY_POLICY = "verify -> local\nlocal -> good"
VERIFY_GMF = {"grid-mapfile": f'"{ALICE}" cjohn\n'}
CASES.update({
    # --- verify_proxy (needs a certificate) ------------------------------------
    "verify_default_limited": Case(
        _verify(""), VERIFY_POLICY, (), "permit", files=VERIFY_GMF, pem="limited"),
    "verify_disallow_limited_limited": Case(
        _verify(' "--disallow-limited-proxy"'), VERIFY_POLICY, (), "deny", files=VERIFY_GMF,
        pem="limited"),
    "verify_disallow_limited_normal": Case(
        _verify(' "--disallow-limited-proxy"'), VERIFY_POLICY, (), "permit", files=VERIFY_GMF,
        pem="proxy"),
    "verify_require_limited_normal": Case(
        _verify(' "--require-limited-proxy"'), VERIFY_POLICY, (), "deny", files=VERIFY_GMF,
        pem="proxy"),
    "verify_require_limited_limited": Case(
        _verify(' "--require-limited-proxy"'), VERIFY_POLICY, (), "permit", files=VERIFY_GMF,
        pem="limited"),
})


@pytest.fixture(scope="module")
def pool_groups() -> Iterator[None]:
    """Real groups for the voms_poolgroup pool (c-prefixed, removed afterwards)."""
    made = []
    for g in POOL_GROUPS:
        if subprocess.run(["getent", "group", g], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", g], check=True)
            made.append(g)
    yield
    for g in made:
        subprocess.run(["groupdel", g], capture_output=True)


@pytest.fixture(scope="module")
def limited_proxy(creds, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice's limited RFC proxy, chaining to the harness's CA directory."""
    out = tmp_path_factory.mktemp("limited") / "limited.pem"
    user = creds.directory / "alice"
    subprocess.run(
        ["grid-proxy-init", "-q", "-rfc", "-limited", "-cert", str(user / "usercert.pem"),
         "-key", str(user / "userkey.pem"), "-certdir", str(creds.certdir), "-out", str(out)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(out.parent)},
    )
    return out


def _leases(root: Path) -> list[tuple[str, tuple[str, int], ...]]:
    out = []
    for d in ("gridmapdir", "groupmapdir"):
        p = root / d
        if p.is_dir():
            out.append((d, *sorted((n, os.stat(p / n).st_nlink) for n in os.listdir(p))))
    return out


def _leases_names(root: Path) -> list[tuple[str, ...]]:
    return [(d, *(n for n, _ in rest)) for d, *rest in _leases(root)]


def _site(root: Path, case: Case, certdir: Path) -> Path:
    cfg = make_site(root, certdir, *(() if case.entries is None else (case.entries,)))
    for name, text in case.files.items():
        (cfg / name).write_text(text)
    gmd = root / "gridmapdir"
    if "groupmapdir" in case.plugins:
        grp = root / "groupmapdir"
        grp.mkdir()
        for g in POOL_GROUPS:
            (grp / g).touch()
    (cfg / "lcmaps.db").write_text(_db(case, cfg, gmd, certdir))
    if case.setup is not None:
        case.setup(gmd)
    return cfg


def _run_both(oracle, creds, tmp_path: Path, case: Case, args: tuple[str, ...]):
    env = cred_env(creds.certdir, creds.vomsdir)
    c_cfg = _site(tmp_path / "c", case, creds.certdir)
    py_cfg = _site(tmp_path / "py", case, creds.certdir)
    assert _leases(tmp_path / "c") == _leases(tmp_path / "py")
    c_args = (["--no-lcas"] if "--dn" in args else []) + list(args)
    c_rc, c_out = run_oracle(oracle, *c_args, config_dir=c_cfg, env=env)
    py_rc, py_out = run_python(py_cfg, *args, env=env)
    return (c_rc, c_out), (py_rc, py_out)


XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[n])) if n in XFAIL else n
    for n in CASES
])
def test_plugin_option_matches_c(name, oracle, creds, test_accounts, pool_groups,
                                 limited_proxy, tmp_path):
    case = CASES[name]
    args = case.args
    if case.pem is not None:
        pem = limited_proxy if case.pem == "limited" else creds.proxy("alice", case.pem)
        args = ("--pem", str(pem), *args)
    (c_rc, c_out), (py_rc, py_out) = _run_both(oracle, creds, tmp_path, case, args)
    assert c_out.get("decision") == case.decision, c_out
    assert (py_rc, compared(py_out)) == (c_rc, compared(c_out))
    assert _leases(tmp_path / "py") == _leases(tmp_path / "c")
    if case.lease is not None:
        assert any(case.lease in d[1:] for d in _leases_names(tmp_path / "c")), case.lease
