"""The policy state machine and the return-account rule (C LCMAPS semantics)."""

from __future__ import annotations

import threading

import pytest

from lcmaps.evaluation import Engine, map_credential
from lcmaps.plugin_api import Mode, Plugin, Request, RequestedAccount, RunContext
from lcmaps.policy_db import PolicyDbError, parse_policy_db

HEAD = (
    "path = /usr/lib/lcmaps\n"
    'u1 = "lcmaps_dummy_good.mod --dummy-uid 1 --dummy-gid 2 --dummy-sec-gid 7"\n'
    "bad = lcmaps_dummy_bad.mod\n"
    "noop = lcmaps_voms.mod\n"
)


class Recorder(Plugin):
    """A site plugin: records the uids it saw on entry, adds uid 5 and gid 6."""

    seen: list[list[int]] = []

    def run(self, ctx: RunContext) -> bool:
        Recorder.seen.append(list(ctx.data.uids))
        ctx.data.add_uid(5)
        ctx.data.add_pgid(6)
        ctx.data.add_sgid(9)
        ctx.data.add_sgid(3)
        ctx.data.add_sgid(9)
        return True


def engine(text: str) -> Engine:
    return Engine(parse_policy_db(HEAD + text, "t.db"))


def test_evaluation_success_follows_true_branch():
    r = map_credential(engine("p:\nu1 -> noop\n"), "/CN=a")
    assert (r.decision, r.uid, r.pgid, r.pgids, r.sgids) == ("permit", 1, 2, (2,), (7,))
    assert r.poolindex == "dummy%201%202"


def test_evaluation_false_branch_taken_on_failure():
    r = map_credential(engine("p:\nbad -> noop | u1\n"), "/CN=a")
    assert r.uid == 1


def test_evaluation_failure_without_false_branch_moves_to_next_policy():
    r = map_credential(engine("p1:\nbad -> u1\np2:\nu1 -> noop\n"), "/CN=a")
    assert r.permitted and r.uid == 1


def test_evaluation_last_plugin_result_counts():
    e = engine("p:\n~noop -> bad\n")
    assert e.run(Request(dn="/CN=a")).reason is None  # '~good -> x' succeeds
    e = engine("p:\nu1 -> bad\n")
    assert e.run(Request(dn="/CN=a")).reason is not None


def test_evaluation_data_reset_between_policies():
    Recorder.seen = []
    db = parse_policy_db(HEAD + "p1:\nu1 -> bad\np2:\nlcmaps_rec.mod -> noop\n", "t.db")
    e = Engine(db, {"rec": Recorder, "dummy_good": _cls("dummy_good"),
                    "dummy_bad": _cls("dummy_bad"), "voms": _cls("voms")})
    r = map_credential(e, "/CN=a")
    assert Recorder.seen == [[]]  # uid 1 from the failed policy p1 did not leak
    assert (r.uid, r.pgids, r.sgids) == (5, (6,), (3, 9))  # sgids sorted, unique


def _cls(name: str) -> type[Plugin]:
    from lcmaps.evaluation import plugin_class

    cls = plugin_class(name)
    assert cls is not None
    return cls


def test_evaluation_two_uids_in_one_chain_deny():
    e = Engine(parse_policy_db(HEAD + "p:\nu1 -> lcmaps_rec.mod\n", "t.db"),
               {"rec": Recorder, "dummy_good": _cls("dummy_good"),
                "dummy_bad": _cls("dummy_bad"), "voms": _cls("voms")})
    r = map_credential(e, "/CN=a")
    assert r.decision == "deny" and r.reason == "found 2 uids, exactly 1 needed"


def test_evaluation_no_primary_gid_denies():
    text = 'g = "lcmaps_dummy_good.mod --dummy-uid 1"\np:\ng -> lcmaps_voms.mod\n'
    e = Engine(parse_policy_db(text, "t.db"),
               {"dummy_good": _cls("dummy_good"), "voms": _cls("voms")})
    r = map_credential(e, "/CN=a")
    assert r.decision == "deny" and "no primary gid" in (r.reason or "")


def test_evaluation_policy_selection_runs_in_file_order():
    e = engine("p1:\nu1 -> noop\np2:\nbad -> noop\n")
    assert map_credential(e, "/CN=a", policies=["p2"]).decision == "deny"
    # p1 comes first in the file, so it decides although p2 is named first
    assert map_credential(e, "/CN=a", policies=["p2", "p1"]).uid == 1
    r = map_credential(e, "/CN=a", policies=["nosuch"])
    assert r.decision == "deny" and r.reason == "no selected policy to evaluate"


def test_evaluation_unselected_policy_is_skipped_even_with_false_branches():
    e = engine("p1:\nbad -> noop | u1\np2:\nu1 -> noop\n")
    assert map_credential(e, "/CN=a", policies=["p2"]).uid == 1


def test_evaluation_verification_mode_uses_plugin_verify():
    e = engine("p:\nu1 -> noop\n")
    # dummy_good's plugin_verify adds nothing (as in C): no uid, so deny
    r = map_credential(e, "/CN=a", mode=Mode.VERIFICATION, requested=RequestedAccount(uid=1))
    assert r.decision == "deny"


def test_evaluation_engine_is_reentrant_across_threads():
    e = engine("p:\nu1 -> noop\n")
    results: list[int | None] = []

    def worker() -> None:
        for _ in range(200):
            results.append(map_credential(e, "/CN=a").uid)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == [1] * 800


def test_evaluation_plugin_init_error_names_file_line_and_plugin():
    with pytest.raises(PolicyDbError) as ei:
        engine('x = "lcmaps_dummy_good.mod --dummy-uid 1x"\np:\nx -> noop\n')
    assert str(ei.value).startswith("t.db:7: cannot initialise lcmaps_dummy_good.mod")
    assert "1x" in str(ei.value)


def test_evaluation_unknown_entry_point_is_not_found():
    with pytest.raises(PolicyDbError) as ei:
        engine("p:\nlcmaps_nosuch.mod -> noop\n")
    assert str(ei.value) == "t.db:6: plugin lcmaps_nosuch.mod not found"
