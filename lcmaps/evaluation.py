"""Run an lcmaps.db: the policy state machine of C LCMAPS and its result rule.

:class:`Engine` is built once from a parsed :class:`~lcmaps.policy_db.PolicyDb`
(plugins found through entry points and initialised once, in the order C
initialises them) and then run many times. Each run gets its own credential
store, so one engine serves concurrent requests (plugins keep no
per-request state).

Semantics copied from ``pdl_main.c`` / ``evaluationmanager.c``:

* policies run in file order; a failing plugin follows its rule's false
  branch, or else moves to the next policy's first rule; success follows
  the true branch and stops when there is none;
* the credential data is reset whenever evaluation enters another policy
  (leases made on disk stay);
* with a policy selection, unselected policies fail through without
  running anything, so selected ones still run in file order;
* the overall result is the result of the last plugin run;
* a mapping (``map_credential``) is granted only when the successful run
  produced exactly one UID and at least one primary GID.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from lcmaps import accounts
from lcmaps.plugin_api import (
    STORE_FACTORY,
    CredentialData,
    Mode,
    Plugin,
    PluginInitError,
    PluginUnavailable,
    Request,
    RequestedAccount,
    RunContext,
    lease_error_type,
)
from lcmaps.policy_db import Policy, PolicyDb, PolicyDbError, Rule, module_name
from safetext import one_line
from sitefiles.plugins import LazyLogger, load_plugin_class

if TYPE_CHECKING:
    from credentials.credential import Credential
    from leases.store import LeaseStore

#: ``observer(policy, module, ok, ctx)``: told of every plugin run, in order
Observer = Callable[[str, str, bool, RunContext], None]

log = LazyLogger("lcmaps")

ENTRY_POINT_GROUP = "scas_stack.lcmaps_plugins"

#: The built-in plugins, exactly as pyproject.toml declares them as entry points (a test keeps
#: the two equal): found without scanning installed distributions.
BUILTIN_PLUGINS: Mapping[str, str] = {
    "localaccount": "lcmaps.plugins.localaccount:LocalAccount",
    "poolaccount": "lcmaps.plugins.poolaccount:PoolAccount",
    "ban_dn": "lcmaps.plugins.ban:BanDn",
    "ban_fqan": "lcmaps.plugins.ban:BanFqan",
    "voms_localgroup": "lcmaps.plugins.voms_group:VomsLocalGroup",
    "voms_poolgroup": "lcmaps.plugins.voms_group:VomsPoolGroup",
    "voms_localaccount": "lcmaps.plugins.voms_account:VomsLocalAccount",
    "voms_poolaccount": "lcmaps.plugins.voms_account:VomsPoolAccount",
    "verify_proxy": "lcmaps.plugins.verify_proxy:VerifyProxy",
    "posix_enf": "lcmaps.plugins.posix_enf:PosixEnf",
    "ldap_enf": "lcmaps.plugins.ldap_enf:LdapEnf",
    "dummy_good": "lcmaps.plugins.dummy:DummyGood",
    "dummy_bad": "lcmaps.plugins.dummy:DummyBad",
    "voms": "lcmaps.plugins.dummy:VomsNoop",
    "scas_client": "lcmaps.plugins.scas_client:ScasClient",
    "gums_client": "lcmaps.plugins.scas_client:ScasClient",
}


def plugin_class(name: str) -> type[Plugin] | None:
    """The class behind plugin ``name``: built in, else an entry point (imported on first use
    only)."""
    return load_plugin_class(ENTRY_POINT_GROUP, name, BUILTIN_PLUGINS)


class MappingUnavailable(Exception):
    """No decision could be made: a plugin's lease store or server failed, or a plugin
    crashed. Never a deny: the service answers Indeterminate so clients fail over."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


@dataclass(frozen=True)
class MappingResult:
    """What ``lcmaps-run`` prints and the SCAS server turns into obligations."""

    decision: str  # permit | deny | error
    uid: int | None = None
    username: str | None = None
    pgid: int | None = None
    pgids: tuple[int, ...] = ()
    sgids: tuple[int, ...] = ()
    poolindex: str | None = None
    lease_new: bool | None = None  # the pool index is a lease this mapping made
    reason: str | None = None
    kind: str | None = None  # for a deny: BANNED, EXHAUSTED (plugin_api) or None
    checks: tuple[tuple[str, bool], ...] = ()  # RunContext.checks of the run

    @property
    def permitted(self) -> bool:
        return self.decision == "permit"


class Engine:
    """A parsed lcmaps.db with its plugins initialised."""

    def __init__(
        self, db: PolicyDb, classes: Mapping[str, type[Plugin]] | None = None
    ) -> None:
        self.db = db
        self.policies: tuple[Policy, ...] = db.policies
        self.plugins: dict[str, Plugin] = {}
        # Seams for ``scas-admin explain`` (None in the service): a callback told each step
        # of the state machine, and where the pool plugins get their lease stores during a
        # run (a read-only store, so that explaining a decision leases nothing).
        self.observer: Observer | None = None
        self.store_factory: Callable[[str], LeaseStore] | None = None
        for spec in db.plugins:
            if classes is not None:
                cls = classes.get(spec.entry_point)
            else:
                cls = plugin_class(spec.entry_point)
            if cls is None:
                raise PolicyDbError(db.filename, spec.lineno, f"plugin {spec.module} not found")
            try:
                self.plugins[spec.module] = cls(spec.argv)
            except PluginInitError as exc:
                self.close()
                raise PolicyDbError(
                    db.filename, spec.lineno, f"cannot initialise {spec.module}: {exc.reason}"
                ) from None

    def close(self) -> None:
        for p in self.plugins.values():
            p.terminate()

    def memo_safe(self, policies: Sequence[str] | None = None) -> bool:
        """May a mapping by ``policies`` be reused for a short time? Only when every plugin
        they can reach says so (:attr:`Plugin.memo_safe`), and not while explaining."""
        if self.observer is not None or self.store_factory is not None:
            return False
        selected = set(policies) if policies else None
        for policy in self.policies:
            if selected is not None and policy.name not in selected:
                continue
            states = {s for r in policy.rules for s in (r.state, r.true_branch, r.false_branch)}
            if not all(self.plugins[module_name(s)].memo_safe for s in states if s is not None):
                return False
        return True

    @staticmethod
    def _find(policy: Policy, state: str | None) -> Rule | None:
        if state is None:
            return None
        return next((r for r in policy.rules if r.state == state), None)

    def run(self, request: Request, policies: Sequence[str] | None = None) -> RunContext:
        """Evaluate; ``ctx.reason`` is None on success. The store holds the
        data of the policy that ran last."""
        if self.store_factory is None:
            return self._run(request, policies)
        token = STORE_FACTORY.set(self.store_factory)
        try:
            return self._run(request, policies)
        finally:
            STORE_FACTORY.reset(token)

    def _run(self, request: Request, policies: Sequence[str] | None) -> RunContext:
        ctx = RunContext(request)
        if request.mode is Mode.VERIFICATION:
            missing = [m for m, p in self.plugins.items() if not p.has_verify]
            if missing:
                ctx.fail(f"plugin {missing[0]} has no verification method")
                return ctx
        selected = set(policies) if policies else None
        if not self.policies:
            ctx.fail("no policies")
            return ctx
        pidx = 0
        rule: Rule | None = self.policies[0].rules[0]
        state: str | None = rule.state if rule else None
        result: bool | None = None
        prev: Policy | None = None
        ran_any = False
        while state is not None:
            policy = self.policies[pidx]
            if selected is not None and policy.name not in selected:
                result = False
            else:
                if policy is not prev:
                    log.debug("starting policy %s", policy.name)
                    ctx.data.reset()
                    prev = policy
                module = module_name(state)
                result = self._run_plugin(module, ctx)
                if self.plugins[module].reads_credential:
                    ctx.checks.append((module, result))
                ran_any = True
                if self.observer is not None:
                    self.observer(policy.name, module, result, ctx)
            state, rule, pidx = self._next(result, rule, pidx)
        if not ran_any:
            ctx.fail("no selected policy to evaluate")
        elif result:
            ctx.reason = None
        elif ctx.reason is None:
            ctx.reason = "no policy succeeded"
        return ctx

    def _next(self, ok: bool, rule: Rule | None, pidx: int) -> tuple[str | None, Rule | None, int]:
        policy = self.policies[pidx]
        if ok:
            state = rule.true_branch if rule else None
            return state, self._find(policy, state), pidx
        state = rule.false_branch if rule else None
        if rule is not None and state is not None:
            return state, self._find(policy, state), pidx
        if pidx + 1 < len(self.policies):
            nxt = self.policies[pidx + 1].rules[0]
            return nxt.state, nxt, pidx + 1
        return None, None, pidx

    def check(self, module: str, request: Request) -> bool:
        """One plugin on its own: a kept mapping's re-check of a credential-reading plugin on
        another credential (``scas_server.mapping_memo``). Raises as a run does."""
        return self._run_plugin(module, RunContext(request))

    def _run_plugin(self, module: str, ctx: RunContext) -> bool:
        plugin = self.plugins[module]  # policy_db checked every state names a module
        try:
            ok = plugin.verify(ctx) if ctx.verifying else plugin.run(ctx)
        except lease_error_type() as exc:
            if not exc.unavailable:
                return ctx.fail(f"{module}: {exc}")
            raise MappingUnavailable(f"{module}: {exc}") from None
        except PluginUnavailable as exc:
            raise MappingUnavailable(f"{module}: {exc.reason}") from None
        except OSError as exc:
            raise MappingUnavailable(f"{module}: {exc.strerror or exc}") from None
        except Exception as exc:  # a plugin bug: not the user's fault, and not a policy
            log.exception("plugin %s crashed", module)
            raise MappingUnavailable(f"{module} crashed: {type(exc).__name__}") from None
        log.debug("plugin %s: %s", module, "success" if ok else "failure")
        return ok


def _username(uid: int) -> str | None:
    try:
        return accounts.account_by_uid(uid).name
    except accounts.UnknownAccount:
        return None


def map_credential(
    engine: Engine,
    dn: str,
    fqans: Sequence[str] = (),
    *,
    credential: Credential | None = None,
    policies: Sequence[str] | None = None,
    mapcounter: int | None = None,
    mode: Mode = Mode.NORMAL,
    requested: RequestedAccount | None = None,
    now: datetime | None = None,
) -> MappingResult:
    """Run the engine and apply the return-account rule. Raises :class:`MappingUnavailable`
    for a fault (see :meth:`Engine._run_plugin`); every other outcome is a result.

    The return-account rule (exactly one UID, at
    least one primary GID); in VERIFICATION mode the UID found must also be
    the requested one (LCMAPS' default ``LCMAPS_VERIFY_TYPE=uid``)."""
    request = Request(
        dn=dn,
        fqans=tuple(fqans),
        credential=credential,
        mapcounter=-1 if mapcounter is None else mapcounter,
        mode=mode,
        requested=requested,
        now=now,
    )
    ctx = engine.run(request, policies)
    if ctx.reason is not None:
        return MappingResult("deny", reason=ctx.reason, kind=ctx.kind)
    data: CredentialData = ctx.data
    if len(data.uids) != 1:
        return MappingResult("deny", reason=f"found {len(data.uids)} uids, exactly 1 needed")
    if not data.pgids:
        return MappingResult("deny", reason="no primary gid found, at least 1 needed")
    uid = data.uids[0]
    if mode is Mode.VERIFICATION and (requested is None or requested.uid != uid):
        return MappingResult("deny", reason=f"mapped uid {uid} is not the requested uid")
    log.info(
        "LCMAPS CRED FINAL: DN:%r -> uid:%d pgid:%s sgid:%s poolindex:%s",
        one_line(data.dn or dn),
        uid,
        data.pgids,
        data.sgids,
        data.poolindex,
    )
    return MappingResult(
        "permit",
        uid=uid,
        username=_username(uid),
        pgid=data.pgids[0],
        pgids=tuple(data.pgids),
        sgids=tuple(data.sgids),
        poolindex=data.poolindex,
        lease_new=data.lease_new,
        checks=tuple(ctx.checks),
    )
