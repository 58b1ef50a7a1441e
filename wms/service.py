"""The CE's decisions, free of HTTP: who asks (a DN from TLS) and what, in; records out.

Submission, in order; each refusal leaves nothing behind:

1. the delegation: the caller's own pending key, the returned chain verified and for that
   key, its identity the caller's TLS identity;
2. the JDL (parsed again here: the CE trusts no client) and the uploaded sandbox (exactly
   the declared files, regular, within the limit), all in memory;
3. SCAS (``ce``/``queue``): Deny -> :class:`Refused`, no answer -> :class:`Unavailable`;
4. only now the job is recorded (Waiting), its proxy written (0600), and glexec stages the
   sandbox and runs ``sbatch`` as the mapped account (:mod:`wms.batch`). A failure there
   removes the job directory and the proxy and records the job Aborted with the reason.

Status, cancel, output and purge answer only the job's owner (the same DN); for anybody
else the job does not exist.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from credentials.credential import TrustStore, read_voms_unverified
from safetext import one_line
from wms import batch as batchmod
from wms import delegation, jdl, sandbox, states
from wms.authz import Authorizer, Refused, Unavailable
from wms.batch import Batch, BatchError
from wms.config import CeConfig
from wms.store import Delegation, JobRecord, Store

__all__ = ["CE", "Refused", "Unavailable"]

log = logging.getLogger("wms.ce")
_RESERVED = batchmod.WRAPPER_DIR


@dataclass(frozen=True)
class Upload:
    """One submission as the client sent it."""

    jdl_text: str
    jdl_name: str
    delegation_id: str
    chain_pem: bytes
    sandbox: IO[bytes]


class CE:
    """One CE: configuration, store, SCAS client and Slurm hands (all injectable)."""

    def __init__(self, cfg: CeConfig, store: Store, authorizer: Authorizer, batch: Batch,
                 clock: Any = time.time) -> None:  # fmt: skip
        self.cfg, self.store, self.authz, self.batch = cfg, store, authorizer, batch
        self.clock = clock
        self._states_cache: tuple[float, dict[str, dict[str, str]] | None] = (0.0, None)

    # -- delegation ------------------------------------------------------------------

    def delegate(self, owner: str) -> dict[str, Any]:
        key_pem, csr_pem = delegation.new_request(self.cfg.delegation_key)
        did = secrets.token_hex(12)
        now = self.clock()
        self.store.expire_delegations(now - 3600)
        self.store.add_delegation(Delegation(did, owner, key_pem, now))
        return {"id": did, "request": csr_pem.decode(), "lifetime": self.cfg.delegation_lifetime,
                "max_input_sandbox": self.cfg.max_input_sandbox}  # fmt: skip

    def _delegated(self, owner: str, up: Upload) -> delegation.Delegated:
        pending = self.store.take_delegation(up.delegation_id, owner)
        if pending is None:
            raise Refused(f"no pending delegation {one_line(up.delegation_id, 40)} of yours "
                          "(expired, used, or made by someone else)", 400)  # fmt: skip
        now = datetime.fromtimestamp(self.clock(), UTC)
        try:
            got = delegation.accept(up.chain_pem, pending.key_pem,
                                    TrustStore(self.cfg.ca_dir), now=now)  # fmt: skip
        except delegation.DelegationError as exc:
            raise Refused(str(exc), 400) from None
        if got.identity != owner:
            raise Refused("the delegated proxy is not the caller's (its identity differs from "
                          "the TLS client's)")  # fmt: skip
        return got

    # -- submission ------------------------------------------------------------------

    def _check(self, up: Upload, got: delegation.Delegated) -> tuple[jdl.Job, list[Any]]:
        try:
            job = jdl.parse_job(up.jdl_text, up.jdl_name)
        except jdl.JdlError as exc:
            raise Refused(str(exc), 400) from None
        for name in job.input_sandbox + job.output_sandbox:
            if name.split("/")[0] == _RESERVED:
                raise Refused(f"sandbox name {name!r}: {_RESERVED}/ is the CE's", 400)
        vos = {ac.vo for ac in read_voms_unverified(got.credential)}
        if job.virtual_organisation and vos and job.virtual_organisation not in vos:
            raise Refused(f"VirtualOrganisation {job.virtual_organisation!r} does not match "
                          f"the proxy's VO ({', '.join(sorted(vos))})", 400)  # fmt: skip
        try:
            files = sandbox.check_upload(up.sandbox, job.input_sandbox,
                                         self.cfg.max_input_sandbox)  # fmt: skip
        except sandbox.SandboxError as exc:
            raise Refused(str(exc), 413 if "limit" in str(exc) else 400) from None
        return job, files

    def submit(self, owner: str, up: Upload) -> JobRecord:
        """Authorize, stage, queue; Refused / Unavailable with nothing left behind."""
        t_start = time.perf_counter()
        got = self._delegated(owner, up)
        job, files = self._check(up, got)
        fqans = tuple(f for ac in read_voms_unverified(got.credential) for f in ac.fqans)
        mapping = self.authz.ask(got.credential.pem_chain(), fqans)
        job_id = secrets.token_hex(12)
        now = self.clock()
        rec = JobRecord(
            id=job_id, owner=owner, state=states.WAITING, detail="", exit_code=None,
            slurm_id=None, username=mapping.username, uid=mapping.uid, gid=mapping.gid,
            job=job.as_dict(), workdir=os.path.join(self.cfg.job_dir, job_id),
            proxy=os.path.join(self.cfg.proxy_dir, f"{job_id}.pem"), created=now, updated=now,
            timings={"authorization": round(mapping.seconds, 6)},
        )  # fmt: skip
        self.store.add_job(rec)
        try:
            _write_private(rec.proxy or "", got.pem)
            script = batchmod.job_script(job).encode()
            files.append(sandbox.SandboxFile(f"{_RESERVED}/job.sh", len(script), 0o770,
                                             data=script))  # fmt: skip
            done = self.batch.submit(rec.proxy or "", rec.workdir, f"wms-{job_id}",
                                     lambda out: sandbox.write_tar(out, files))  # fmt: skip
        except BatchError as exc:
            self._undo(rec, exc.message)
            if exc.kind == batchmod.RETRYABLE:
                raise Unavailable(exc.message) from None
            if exc.kind == batchmod.REFUSED:
                raise Refused(exc.message) from None
            raise Unavailable(f"the job could not be queued: {exc.message}") from None
        except (OSError, sandbox.SandboxError) as exc:
            self._undo(rec, f"staging failed: {exc}")
            raise Unavailable(f"staging failed: {one_line(exc, 200)}") from None
        timings = {**rec.timings, "glexec": round(done.glexec_s, 6),
                   "staging": round(done.staging_s, 6), "sbatch": round(done.sbatch_s, 6),
                   "total": round(time.perf_counter() - t_start, 6)}  # fmt: skip
        self.store.update(job_id, states.Status(states.READY), slurm_id=done.slurm_id,
                          timings=timings)  # fmt: skip
        log.info("job %s of %s queued as Slurm job %s under %s", job_id, one_line(owner, 200),
                 done.slurm_id, mapping.username)  # fmt: skip
        return self.store.job(job_id) or rec

    def _undo(self, rec: JobRecord, reason: str) -> None:
        batchmod.remove_workdir(rec.workdir)
        _remove(rec.proxy)
        self.store.update(rec.id, states.Status(states.ABORTED, one_line(reason, 300)),
                          proxy=None)  # fmt: skip
        log.warning("job %s aborted at submission: %s", rec.id, one_line(reason, 300))

    # -- following jobs --------------------------------------------------------------

    def _slurm_states(self, fresh: bool = False) -> dict[str, dict[str, str]] | None:
        at, cached = self._states_cache
        if cached is not None and self.clock() - at < 1.0 and not fresh:
            return cached
        found = self.batch.states()
        self._states_cache = (self.clock(), found)
        return found

    def refresh(self, rec: JobRecord) -> JobRecord:
        """Bring a job that is not final up to date with Slurm; final states stay."""
        if rec.final or rec.slurm_id is None:
            return rec
        known = self._slurm_states()
        if known is None:
            return rec  # slurmctld did not answer: show the last known state
        fields = known.get(rec.slurm_id)
        if fields is None:  # the cached listing may predate this job: never conclude from it
            known = self._slurm_states(fresh=True)
            if known is None:
                return rec
            fields = known.get(rec.slurm_id)
        if fields is not None:
            new = states.from_slurm(fields, batchmod.exit_record(rec.workdir))
        else:
            record = self.batch.finished(rec.slurm_id)
            wrapper = batchmod.exit_record(rec.workdir)
            new = states.from_slurm(record, wrapper) if record else states.vanished(wrapper)
        self.store.update(rec.id, new)
        if new.final:
            self._drop_proxy(rec)
        return self.store.job(rec.id) or rec

    def _drop_proxy(self, rec: JobRecord) -> None:
        """A final job needs no credential: remove the delegated proxy."""
        _remove(rec.proxy)
        self.store.update(rec.id, proxy=None)

    def _mine(self, owner: str, job_id: str) -> JobRecord:
        rec = self.store.job(job_id)
        if rec is None or rec.owner != owner:
            raise Refused(f"no job {one_line(job_id, 40)} of yours on this CE", 404)
        return rec

    def status(self, owner: str, job_id: str) -> JobRecord:
        return self.refresh(self._mine(owner, job_id))

    def jobs_of(self, owner: str) -> list[JobRecord]:
        return [self.refresh(r) for r in self.store.jobs(owner)]

    def history(self, owner: str, job_id: str) -> list[tuple[float, str, str]]:
        self._mine(owner, job_id)
        return self.store.events(job_id)

    def cancel(self, owner: str, job_id: str) -> JobRecord:
        rec = self.status(owner, job_id)
        if rec.final:
            raise Refused(f"job {job_id} is {rec.status.text()}: nothing to cancel", 409)
        if rec.slurm_id is None or not rec.proxy:
            raise Refused(f"job {job_id} is still being submitted: try again in a moment", 409)
        try:
            self.batch.cancel(rec.proxy, rec.slurm_id)
        except BatchError as exc:
            if exc.kind == batchmod.REFUSED:
                raise Refused(exc.message) from None
            raise Unavailable(exc.message) from None
        self.store.update(job_id, states.Status(states.CANCELLED, "cancelled by the owner"))
        self._drop_proxy(rec)
        return self.store.job(job_id) or rec

    def output(self, owner: str, job_id: str) -> tuple[bytes, list[str]]:
        """(tar of StdOutput, StdError and the OutputSandbox files, names not served)."""
        rec = self.status(owner, job_id)
        if rec.state == states.CLEARED:
            raise Refused(f"job {job_id}: the output was already retrieved (Cleared)", 409)
        if rec.state != states.DONE:
            raise Refused(f"job {job_id} is {rec.status.text()}: output is available once "
                          "it is Done", 409)  # fmt: skip
        job = rec.job
        names = [n for n in (job.get("StdOutput"), job.get("StdError")) if n]
        names += [n for n in job.get("OutputSandbox", []) if n not in names]
        try:
            return sandbox.collect_output(rec.workdir, names, self.cfg.max_output_sandbox)
        except sandbox.SandboxError as exc:
            raise Refused(f"job {job_id}: {exc}", 409) from None

    def purge(self, owner: str, job_id: str) -> JobRecord:
        """After the output was fetched: remove the job directory; the job is Cleared."""
        rec = self.status(owner, job_id)
        if rec.state == states.CLEARED:
            return rec
        if not rec.final:
            raise Refused(f"job {job_id} is {rec.status.text()}: not finished", 409)
        gone = batchmod.remove_workdir(rec.workdir)
        detail = "" if gone else "job directory only partly removed"
        self.store.update(job_id, states.Status(states.CLEARED, detail))
        return self.store.job(job_id) or rec

    # -- start-up --------------------------------------------------------------------

    def recover(self) -> list[str]:
        """After a restart: a job left in Waiting (the CE stopped during its submission) is
        found in Slurm by its name, or aborted and its directory removed."""
        fixed = []
        for rec in self.store.jobs(states=(states.SUBMITTED, states.WAITING)):
            slurm_id = self.batch.find_by_name(f"wms-{rec.id}")
            if slurm_id is not None:
                self.store.update(rec.id, states.Status(states.READY), slurm_id=slurm_id)
            else:
                self._undo(rec, "the CE stopped during the submission")
            fixed.append(rec.id)
        return fixed


def _write_private(path: str, data: bytes) -> None:
    """A new file, 0600, never over an existing one (the job's delegated proxy)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)  # fmt: skip
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def public(rec: JobRecord, base_url: str) -> dict[str, Any]:
    """What the owner sees of a job (JSON)."""
    return {
        "id": f"{base_url}/jobs/{rec.id}", "state": rec.state, "detail": rec.detail,
        "status": rec.status.text(), "exit_code": rec.exit_code, "slurm_id": rec.slurm_id,
        "account": rec.username, "uid": rec.uid, "gid": rec.gid, "owner": rec.owner,
        "submitted": rec.created, "updated": rec.updated, "timings": rec.timings,
        "jdl": rec.job,
    }  # fmt: skip
