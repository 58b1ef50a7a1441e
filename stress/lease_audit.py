"""After a load run: is the gridmapdir consistent, and does every Permit match its lease?

Checks, each failure one line:

* no pool account is linked to more than one lease (link count > 2);
* every lease file is a hard link of exactly one pool account;
* every Permit the server logged names an account that its lease file is
  still linked to (same inode), and a banned user never got a Permit;
* what the load generator saw on the wire agrees: each user got one
  account for the whole run, the one the server's audit line names.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from stress.population import all_accounts


@dataclass
class AuditReport:
    accounts: int = 0
    leases: int = 0
    permits: int = 0
    denies: int = 0
    first_leases: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _entries(gridmapdir: str, accounts: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    pool: dict[str, int] = {}
    leases: dict[str, int] = {}
    with os.scandir(gridmapdir) as it:
        for entry in it:
            ino = entry.inode()
            (pool if entry.name in accounts else leases)[entry.name] = ino
    return pool, leases


def audit_gridmapdir(gridmapdir: str, accounts: set[str], report: AuditReport) -> dict[str, str]:
    """Check the links; return lease name -> account for the leases that are sound."""
    pool, leases = _entries(gridmapdir, accounts)
    report.accounts, report.leases = len(pool), len(leases)
    by_inode: dict[int, list[str]] = defaultdict(list)
    for name, ino in pool.items():
        by_inode[ino].append(name)
    held: dict[str, list[str]] = defaultdict(list)
    lease_of: dict[str, str] = {}
    for lease, ino in leases.items():
        owners = by_inode.get(ino, [])
        if len(owners) != 1:
            report.problems.append(f"lease {lease} is linked to {len(owners)} pool accounts")
            continue
        held[owners[0]].append(lease)
        lease_of[lease] = owners[0]
    for account, names in sorted(held.items()):
        if len(names) > 1:
            report.problems.append(f"account {account} is linked to {len(names)} leases")
    return lease_of


def audit_permits(audit_lines: list[dict[str, Any]], lease_of: dict[str, str],
                  banned: set[str], report: AuditReport) -> dict[str, str]:
    """Check each logged decision against the gridmapdir; return dn -> account."""
    account_of: dict[str, str] = {}
    for line in audit_lines:
        decision, dn = line.get("decision"), line.get("dn", "")
        if decision == "Deny":
            report.denies += 1
            continue
        if decision != "Permit":
            continue
        report.permits += 1
        account, lease = line.get("account"), line.get("lease")
        if dn in banned:
            report.problems.append(f"banned user {dn} was permitted as {account}")
        if lease_of.get(lease or "") != account:
            report.problems.append(
                f"Permit for {dn} names {account}, but lease {lease} is linked to "
                f"{lease_of.get(lease or '', 'nothing')}"
            )
        first = account_of.setdefault(dn, account or "")
        if first != account:
            report.problems.append(f"{dn} was permitted as {first} and as {account}")
    return account_of


def audit_observed(observed: dict[str, list[Any]], account_of: dict[str, str],
                   report: AuditReport) -> None:
    for dn, (username, _uid) in sorted(observed.items()):
        logged = account_of.get(dn)
        if logged != username:
            report.problems.append(f"client saw {dn} mapped to {username}, the server logged "
                                   f"{logged}")


def read_audit(path: str, offset: int = 0) -> list[dict[str, Any]]:
    """The JSON audit lines written after byte ``offset``."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        fh.seek(offset)
        return [json.loads(line) for line in fh if line.strip()]


def run_audit(manifest: dict[str, Any], audit_offset: int,
              observed_files: list[str], leases_before: int) -> AuditReport:
    report = AuditReport()
    accounts = all_accounts(manifest["pool_sizes"])
    lease_of = audit_gridmapdir(manifest["gridmapdir"], accounts, report)
    banned = {u["dn"] for u in manifest["population"] if u["pool"] is None}
    lines = read_audit(os.path.join(manifest["work"], "audit.log"), audit_offset)
    account_of = audit_permits(lines, lease_of, banned, report)
    for path in observed_files:
        if os.path.exists(path):
            with open(path) as fh:
                audit_observed(json.load(fh), account_of, report)
    report.first_leases = report.leases - leases_before
    return report
