"""The SCAS server's mapping memo (``lcmaps.cache_seconds``), end to end.

A repeat query within ``lcmaps.cache_seconds`` is answered without running LCMAPS again,
but a user must never notice it: the answer is the one a full run gives, a lease released
or taken meanwhile is not handed out from memory, an LCAS ban counts from the next query,
a reused lease is touched (``scas-admin expire`` keeps it), a policy with a plugin that is
not memo-safe (an LCMAPS ban list) always runs, and 0 turns the memo off.

Real site files (test PKI, userban ``lcas.db``, ``verify_proxy -> voms_localgroup ->
voms_poolaccount``), a real gridmapdir with the pool accounts ``bdpool001``/``bdpool002``
(made as root) and the Pipeline the server builds. The only wrapper counts
``Engines.map`` calls (the LCMAPS runs); it does not change what they return.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from client import xacml
from credentials.credential import load_proxy_file
from leases.gridmapdir import GridmapDir
from scas_server.audit import AuditRecord
from scas_server.config import ConfigError, load_config
from scas_server.decision import Pipeline, build_pipeline
from scas_server.peer import Peer
from stress.bench_decision import DN, FQANS, fresh_chains, pool_accounts, write_site

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                       reason="needs root and useradd to create the pool accounts"),
]

POLICY = ("gatekeeper",)
#: long enough that no test outlives a kept mapping by accident
LONG = 30.0


@dataclass
class Site:
    work: str
    pipeline: Pipeline
    chain: bytes
    fresh: Callable[..., bytes]  # another newly delegated proxy of the user (pki.proxy options)
    runs: list[int] = field(default_factory=list)  # one item per LCMAPS run

    @property
    def gridmapdir(self) -> str:
        return os.path.join(self.work, "gridmapdir")

    def ask(self, chain: bytes | None = None) -> AuditRecord:
        body = xacml.build_request(subject_dn=DN, cert_chain=chain or self.chain, resource="ce",
                                   action="queue", request_id=f"_q{time.monotonic_ns()}")
        return self.pipeline.decide(body, Peer("unix", uid=os.getuid())).record

    def permit(self, chain: bytes | None = None) -> AuditRecord:
        record = self.ask(chain)
        assert record.decision == "Permit", record.reason
        return record

    def lease_path(self, record: AuditRecord) -> str:
        assert record.lease
        return os.path.join(self.gridmapdir, record.lease)


@pytest.fixture(scope="module", autouse=True)
def _accounts() -> Iterator[None]:
    with pool_accounts():
        yield


@pytest.fixture
def make_site(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Site]:
    """A fresh site with ``lcmaps.cache_seconds`` set; ``ban_dn`` puts LCMAPS' ban_dn
    (a plugin that is not memo-safe) first in the policy."""

    def make(cache_seconds: float = LONG, *, ban_dn: bool = False,
             verify_proxy: str = "") -> Site:  # fmt: skip
        work = os.fspath(tmp_path_factory.mktemp("memo-site"))
        lcmaps_db = os.path.join(work, "lcmaps.db")
        pki, user = write_site(work, lcmaps={"db": lcmaps_db, "cache_seconds": cache_seconds})
        if ban_dn:
            _add_lcmaps_ban(work)
        if verify_proxy:
            _add_verify_proxy_option(work, verify_proxy)

        def fresh(**options: Any) -> bytes:
            path = pki.proxy(user, fqans=FQANS, **options)
            try:
                return load_proxy_file(path, with_key=False).pem_chain()
            finally:
                os.unlink(path)

        pipeline = build_pipeline(load_config(os.path.join(work, "scas.yaml")))
        site = Site(work, pipeline, fresh_chains(pki, user, 1)[0], fresh)
        full = pipeline.engines.map

        def counted(*args: Any, **kwargs: Any) -> Any:
            site.runs.append(1)
            return full(*args, **kwargs)

        pipeline.engines.map = counted  # type: ignore[method-assign]
        return site

    return make


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()


def _add_lcmaps_ban(work: str) -> None:
    path = os.path.join(work, "lcmaps.db")
    with open(path) as fh:
        text = fh.read()
    policy = "gatekeeper:\nverifyproxy -> vomslocalgroup\n"
    assert policy in text
    text = text.replace(policy, "gatekeeper:\nverifyproxy -> bandn\nbandn -> vomslocalgroup\n")
    ban = os.path.join(work, "lcmaps_ban.db")
    with open(ban, "w") as fh:
        fh.write("# nobody banned\n")
    with open(path, "w") as fh:
        fh.write(f'bandn = "lcmaps_ban_dn.mod" "-banmapfile {ban}"\n{text}')


def _add_verify_proxy_option(work: str, option: str) -> None:
    path = os.path.join(work, "lcmaps.db")
    with open(path) as fh:
        text = fh.read()
    line = next(x for x in text.splitlines() if x.startswith("verifyproxy = "))
    with open(path, "w") as fh:
        fh.write(text.replace(line, f'{line} "{option}"'))


def _ban(path: str) -> None:
    with open(path, "a") as fh:
        fh.write(f'"{DN}"\n')


def _answer(record: AuditRecord) -> tuple[str | None, int | None, int | None, str | None]:
    return record.account, record.uid, record.gid, record.lease


# -- reuse ---------------------------------------------------------------------------


def test_repeat_query_within_cache_time_skips_lcmaps_same_answer(site: Site) -> None:
    first = site.permit()
    again = [site.permit() for _ in range(3)]
    assert len(site.runs) == 1
    assert all(_answer(r) == _answer(first) for r in again)
    assert first.account in ("bdpool001", "bdpool002") and first.uid is not None
    assert (first.lease_event, again[0].lease_event) == ("new", "held")


def test_a_fresh_proxy_of_the_same_user_reuses_the_mapping(site: Site) -> None:
    """A payload's newly delegated proxy: LCMAPS does not run again, verify_proxy is re-run
    on the new chain (below), the answer and the lease are the same."""
    first = site.permit()
    again = [site.permit(site.fresh()) for _ in range(3)]
    assert len(site.runs) == 1
    assert all(_answer(r) == _answer(first) for r in again)
    assert {r.lease_event for r in again} == {"held"}


def test_a_fresh_proxy_verify_proxy_refuses_is_not_answered_from_memory(
    make_site: Callable[..., Site],
) -> None:
    """The service accepts limited proxies; this policy's verify_proxy does not. A limited
    proxy of a user whose mapping is kept must get the full run's answer, a Deny."""
    site = make_site(verify_proxy="--disallow-limited-proxy")
    first = site.permit()
    refused = site.ask(site.fresh(limited=True))
    assert refused.decision == "Deny" and "limited" in (refused.reason or "")
    assert len(site.runs) == 2
    assert _answer(site.permit(site.fresh())) == _answer(first)  # and back to the memo
    assert len(site.runs) == 2


def test_cache_seconds_zero_runs_lcmaps_every_query(make_site: Callable[..., Site]) -> None:
    site = make_site(0)
    assert site.pipeline.config.mapping_cache_seconds == 0
    answers = {_answer(site.permit()) for _ in range(3)}
    assert len(site.runs) == 3
    assert len(answers) == 1


def test_after_cache_time_lcmaps_runs_again(make_site: Callable[..., Site]) -> None:
    site = make_site(0.3)
    first = site.permit()
    site.permit()
    assert len(site.runs) == 1
    time.sleep(0.4)
    later = site.permit()
    assert len(site.runs) == 2
    assert _answer(later) == _answer(first) and later.lease_event == "held"


# -- leases are confirmed per use ------------------------------------------------------


def test_lease_released_behind_memo_is_made_again_and_audited_new(site: Site) -> None:
    first = site.permit()
    assert GridmapDir(site.gridmapdir).release(first.lease or "")
    assert not os.path.exists(site.lease_path(first))
    again = site.permit()
    assert len(site.runs) == 2
    assert again.lease_event == "new"
    lease = os.stat(site.lease_path(again))
    assert again.account is not None
    assert lease.st_nlink == 2
    assert os.path.samefile(site.lease_path(again), os.path.join(site.gridmapdir, again.account))


def test_released_account_taken_by_another_dn_is_not_answered(site: Site) -> None:
    first = site.permit()
    assert first.account is not None
    os.unlink(site.lease_path(first))  # released, then taken as C LCMAPS would take it
    taken = os.path.join(site.gridmapdir, "%2fdc%3dorg%2fcn%3dsomeone%20else:bdpool001")
    os.link(os.path.join(site.gridmapdir, first.account), taken)
    again = site.permit()
    assert again.account is not None and again.account != first.account
    assert again.lease_event == "new"
    assert os.stat(site.lease_path(again)).st_nlink == 2
    assert os.path.samefile(site.lease_path(again), os.path.join(site.gridmapdir, again.account))
    assert os.path.samefile(taken, os.path.join(site.gridmapdir, first.account))


def test_a_released_lease_is_not_made_again_from_memory(site: Site) -> None:
    """Released, and the user unmapped in the same second: the full run refuses, and no
    lease for the user is left behind (a replay only touches a lease that still holds)."""
    first = site.permit()
    assert GridmapDir(site.gridmapdir).release(os.path.basename(site.lease_path(first)))
    with open(os.path.join(site.work, "grid-mapfile"), "w") as fh:
        fh.write("# nobody mapped\n")
    refused = site.ask()
    assert refused.decision == "Deny", refused.reason
    assert [n for n in os.listdir(site.gridmapdir) if n.startswith("%")] == []


def test_memo_hit_touches_the_lease_so_expire_keeps_it(site: Site) -> None:
    first = site.permit()
    path = site.lease_path(first)
    old = time.time() - 86400
    os.utime(path, (old, old))
    before = time.time()
    assert _answer(site.permit()) == _answer(first)
    assert len(site.runs) == 1  # answered from the memo
    assert os.stat(path).st_mtime >= before - 1
    assert GridmapDir(site.gridmapdir).expire(3600) == []
    assert os.path.exists(path)


# -- refusals are never hidden ------------------------------------------------------


def test_lcas_ban_counts_from_the_next_query(site: Site) -> None:
    site.permit()
    site.permit()
    _ban(os.path.join(site.work, "ban_users.db"))  # within the racy window: still seen
    banned = site.ask()
    assert banned.decision == "Deny"
    assert banned.reason.startswith("LCAS:"), banned.reason
    assert banned.account is None
    assert len(site.runs) == 1  # the memo was live (2nd query a hit) when the ban came


def test_policy_with_plugin_not_memo_safe_runs_every_time(
    site: Site, make_site: Callable[..., Site]
) -> None:
    assert site.pipeline.engines.memo_safe(POLICY)  # the plain site is memo-safe
    guarded = make_site(ban_dn=True)
    assert not guarded.pipeline.engines.lcmaps.memo_safe(POLICY)
    assert not guarded.pipeline.engines.memo_safe(POLICY)
    answers = {_answer(guarded.permit()) for _ in range(3)}
    assert len(guarded.runs) == 3 and len(answers) == 1
    _ban(os.path.join(guarded.work, "lcmaps_ban.db"))
    banned = guarded.ask()
    assert banned.decision == "Deny"
    assert banned.reason.startswith("LCMAPS:"), banned.reason


# -- configuration ----------------------------------------------------------------


@pytest.fixture
def config_with(tmp_path: Any) -> Callable[[Any], str]:
    """The site's scas.yaml with ``lcmaps.cache_seconds`` set (removed for None)."""
    work = os.fspath(tmp_path)
    write_site(work)
    path = os.path.join(work, "scas.yaml")

    def edit(value: Any) -> str:
        with open(path) as fh:
            data = yaml.safe_load(fh)
        data["lcmaps"].pop("cache_seconds", None)
        if value is not None:
            data["lcmaps"]["cache_seconds"] = value
        with open(path, "w") as fh:
            yaml.safe_dump(data, fh)
        return path

    return edit


@pytest.mark.parametrize("value", [-0.5, 61, "soon"])
def test_config_refuses_bad_cache_seconds(config_with: Callable[[Any], str], value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_with(value))
    assert any("lcmaps.cache_seconds" in e for e in info.value.errors), info.value.errors


@pytest.mark.parametrize(("value", "seconds"), [(None, 1.0), (0, 0.0), (60, 60.0), (0.25, 0.25)])
def test_config_cache_seconds_default_and_bounds(
    config_with: Callable[[Any], str], value: Any, seconds: float
) -> None:
    assert load_config(config_with(value)).mapping_cache_seconds == seconds
