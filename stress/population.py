"""The stress site: a test PKI, a population of grid users, pool accounts and a server config.

Everything the load test needs is written under one work directory, made
once and reused: the users' VOMS proxies (several VOs and FQANs), a list of
banned users, the pilot's proxy that a worker-node PEP presents as its TLS
client certificate, the CE's host certificate, the lcas.db/lcmaps.db/mapfiles
of a real site policy, a gridmapdir and the scas-server YAML.

The request bodies are built here, not in locust, so the load generator only
substitutes a fresh request ID into a template per request: a query carries
the user's real proxy chain (proxy + end-entity certificate, no key), the way
the C SCAS client sends it.

Pool accounts must exist in the passwd database (LCMAPS resolves them with
getpwnam), so as root this creates them with ``newusers``; they all start with
``ACCOUNT_PREFIX`` and :func:`remove_accounts` deletes exactly those.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import random
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from client import xacml

ACCOUNT_PREFIX = "stp"
REQUEST_ID = "STRESS-REQUEST-ID"
CE_DN = "/DC=org/DC=example/O=Hosts/CN=ce1.example.org"
PILOT_DN = "/DC=org/DC=example/O=Users/CN=Pilot Factory atlas"
PILOT_FQANS = ("/atlas/Role=pilot/Capability=NULL",)


@dataclass(frozen=True)
class Profile:
    """One kind of grid user: the FQANs in their proxy and where the site maps them."""

    fqans: tuple[str, ...]
    pool: str  # account name prefix (the mapfile says ".<pool>")
    group: str


# (FQAN pattern, pool, group) in mapfile order: the first match wins, so specific roles first.
MAP_RULES = (
    ("/atlas/Role=pilot/*", "stpplt", "stppilot"),
    ("/atlas/Role=production/*", "stpapr", "stpatlprd"),
    ("/atlas/*", "stpatl", "stpatlas"),
    ("/cms/Role=lcgadmin/*", "stpcsg", "stpcmssgm"),
    ("/cms/*", "stpcms", "stpcms"),
    ("/dteam/*", "stpdte", "stpdteam"),
)

def _full(group: str, role: str = "NULL") -> str:
    """An FQAN as a VOMS server writes it into the AC."""
    return f"{group}/Role={role}/Capability=NULL"


PROFILES = (
    Profile((_full("/dteam"),), "stpdte", "stpdteam"),
    Profile((_full("/atlas"),), "stpatl", "stpatlas"),
    Profile((_full("/atlas/higgs"), _full("/atlas")), "stpatl", "stpatlas"),
    Profile((_full("/atlas", "production"), _full("/atlas")), "stpapr", "stpatlprd"),
    Profile((_full("/cms"),), "stpcms", "stpcms"),
    Profile((_full("/cms", "lcgadmin"), _full("/cms")), "stpcsg", "stpcmssgm"),
)


@dataclass(frozen=True)
class GridUser:
    dn: str
    fqans: tuple[str, ...]
    pool: str | None  # None: banned, a Deny is expected
    prelease: bool  # mapped once before the run (a repeat mapping), else first-time

    @property
    def expect(self) -> str:
        return "Deny" if self.pool is None else "Permit"


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def design(users: int, banned_share: float = 0.05, seed: int = 7) -> list[GridUser]:
    """The population: distinct DNs over the profiles, some banned, half of the rest pre-leased."""
    rnd = random.Random(seed)
    out = []
    banned = max(1, round(users * banned_share))
    for i in range(users):
        profile = PROFILES[i % len(PROFILES)]
        vo = profile.fqans[0].split("/")[1]
        dn = f"/DC=org/DC=example/O=Users/OU={vo}/CN=Stress User {i:05d}"
        is_banned = i < banned
        out.append(GridUser(dn, profile.fqans, None if is_banned else profile.pool,
                            prelease=not is_banned and rnd.random() < 0.5))
    return out


def pool_sizes(population: list[GridUser]) -> dict[str, int]:
    """Each pool holds everyone who maps to it plus 10% and the pilot; nobody is turned away."""
    need = Counter(u.pool for u in population if u.pool)
    need["stpplt"] += 1
    sizes = {pool: n + max(2, n // 10) for pool, n in need.items()}
    for _pattern, pool, _group in MAP_RULES:  # a pool nobody uses still gets two accounts
        sizes.setdefault(pool, 2)
    return sizes


def account_names(sizes: dict[str, int]) -> dict[str, list[str]]:
    return {pool: [f"{pool}{i:04d}" for i in range(1, n + 1)] for pool, n in sizes.items()}


def all_accounts(sizes: dict[str, int]) -> set[str]:
    return {name for names in account_names(sizes).values() for name in names}


def ensure_accounts(sizes: dict[str, int]) -> int:
    """Create the pool groups and accounts that are missing (root only); return how many."""
    for _pattern, _pool, group in MAP_RULES:
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", group], check=True)
    group_of = {pool: group for _p, pool, group in MAP_RULES}
    lines = []
    for pool, names in account_names(sizes).items():
        gid = grp.getgrnam(group_of[pool]).gr_gid
        for name in names:
            try:
                pwd.getpwnam(name)
            except KeyError:
                lines.append(f"{name}:!::{gid}:stress pool account:/nonexistent:/usr/sbin/nologin")
    if lines:
        subprocess.run(["newusers"], input="\n".join(lines) + "\n", text=True, check=True,
                       capture_output=True)
    return len(lines)


def remove_accounts() -> int:
    """Delete every passwd account and group named ``ACCOUNT_PREFIX...`` that we made."""
    names = [p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(ACCOUNT_PREFIX)
             and p.pw_gecos == "stress pool account"]
    for name in names:
        subprocess.run(["userdel", name], check=False, capture_output=True)
    for _pattern, _pool, group in MAP_RULES:
        subprocess.run(["groupdel", group], check=False, capture_output=True)
    return len(names)


def _policy_files(work: str, population: list[GridUser], gridmapdir: str) -> None:
    rules = "".join(f'"{pat}" .{pool}\n' for pat, pool, _g in MAP_RULES)
    groups = "".join(f'"{pat}" {group}\n' for pat, _pool, group in MAP_RULES)
    _write(os.path.join(work, "grid-mapfile"), rules)
    _write(os.path.join(work, "groupmapfile"), groups)
    bans = "".join(f'"{u.dn}"\n' for u in population if u.pool is None)
    _write(os.path.join(work, "ban_users.db"), "# banned by the stress population\n" + bans)
    _write(os.path.join(work, "lcas.db"),
           f'pluginname="lcas_userban.mod",pluginargs="{work}/ban_users.db"\n')
    _write(os.path.join(work, "lcmaps.db"), f"""\
# the stress site: a VOMS pool-account policy as a grid site runs it
verifyproxy = "lcmaps_verify_proxy.mod" "-certdir {work}/pki/certificates"
vomslocalgroup = "lcmaps_voms_localgroup.mod" "-groupmapfile {work}/groupmapfile" "-mapmin 1"
vomspoolaccount = "lcmaps_voms_poolaccount.mod" "-gridmapfile {work}/grid-mapfile"
                  "-gridmapdir {gridmapdir}" "-override_inconsistency"
posixenf = "lcmaps_posix_enf.mod" "-maxuid 1" "-maxpgid 1" "-maxsgid 32"

glexec_get_account:
verifyproxy -> vomslocalgroup
vomslocalgroup -> vomspoolaccount
vomspoolaccount -> posixenf

gatekeeper:
verifyproxy -> vomslocalgroup
vomslocalgroup -> vomspoolaccount
""")


def _gridmapdir(work: str, sizes: dict[str, int]) -> str:
    path = os.path.join(work, "gridmapdir")
    os.makedirs(path, exist_ok=True)
    for names in account_names(sizes).values():
        for name in names:
            entry = os.path.join(path, name)
            if not os.path.exists(entry):
                open(entry, "a").close()
    return path


def build(work: str, users: int, *, listen: str, workers: int, worker_class: str,
          threads: int) -> dict[str, Any]:
    """Write (or reuse) the whole site under ``work``; return the manifest locust reads."""
    from credentials.credential import load_proxy_file
    from testkit.pki import TestPKI

    work = os.path.abspath(work)
    os.makedirs(work, exist_ok=True)
    population = design(users)
    sizes = pool_sizes(population)
    pki = TestPKI(os.path.join(work, "pki"), reuse_keys=True)
    for vo in ("dteam", "atlas", "cms"):
        pki.trust_vo(vo)
    server = pki.host("localhost", "/DC=org/DC=example/O=Hosts/CN=localhost")
    ce = pki.host("ce1.example.org", CE_DN)
    pilot_user = pki.user("pilot", PILOT_DN)
    pilot_proxy = pki.proxy(pilot_user, fqans=PILOT_FQANS, vo="atlas",
                            out=os.path.join(work, "pilot_proxy.pem"))
    gridmapdir = _gridmapdir(work, sizes)
    _policy_files(work, population, gridmapdir)
    requests = []
    for i, user in enumerate(population):
        cert = pki.user(f"u{i:05d}", user.dn)
        vo = user.fqans[0].split("/")[1]
        proxy = pki.proxy(cert, fqans=user.fqans, vo=vo,
                          out=os.path.join(work, "pki", f"u{i:05d}", "proxy.pem"))
        chain = load_proxy_file(proxy).pem_chain()  # certificates only, no key
        for kind, resource, action, extra in (
            ("ce", "ce", "queue", {"pep_dn": CE_DN}),
            ("wn", "wn", "execute-now", {"pilot_dn": PILOT_DN}),
        ):
            body = xacml.build_request(subject_dn=user.dn, cert_chain=chain, fqans=user.fqans,
                                       resource=resource, action=action, request_id=REQUEST_ID,
                                       host="wn01.example.org", **extra)  # type: ignore[arg-type]
            requests.append({"kind": kind, "dn": user.dn, "expect": user.expect,
                             "pool": user.pool, "body": body.decode()})
    config = {
        "listen": listen,
        "workers": workers,
        "worker_class": worker_class,
        "threads": threads,
        "timeout": 30,
        "tls": {"cert": server.cert_path, "key": server.key_path, "ca_dir": pki.certdir},
        "trust": {"certdir": pki.certdir, "vomsdir": pki.vomsdir},
        "pep_allow": [CE_DN, PILOT_DN],
        "lcas": {"db": "lcas.db"},
        "lcmaps": {"db": "lcmaps.db"},
        "policies": [
            {"resource": "wn", "action": "execute-now", "lcmaps": ["glexec_get_account"]},
            {"resource": "ce", "action": "queue", "lcmaps": ["gatekeeper"]},
        ],
        "audit": {"file": os.path.join(work, "audit.log")},
        "issuer": "scas.stress",
        "log_level": "warning",
    }
    with open(os.path.join(work, "scas.yaml"), "w") as fh:
        yaml.safe_dump(config, fh)
    manifest: dict[str, Any] = {
        "work": work,
        "ca_file": os.path.join(pki.dir, "ca.pem"),
        "pep": {"ce": [ce.cert_path, ce.key_path], "wn": [pilot_proxy, pilot_proxy]},
        "request_id": REQUEST_ID,
        "requests": requests,
        "population": [asdict(u) for u in population],
        "pool_sizes": sizes,
        "gridmapdir": gridmapdir,
    }
    with open(os.path.join(work, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)
    return manifest
