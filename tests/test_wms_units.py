"""The submission path's parts without a cluster: JDL, delegation, sandboxes, states, the
CE's configuration and store. Real files, real certificates (the test PKI), no mocks."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from credentials.credential import TrustStore, load_pem
from credentials.proxy_chain import ProxyType
from testkit.pki import TestPKI, User
from wms import delegation, sandbox, states
from wms.batch import job_script, parse_fields
from wms.config import ConfigError, load_config
from wms.jdl import JdlError, parse_job
from wms.store import JobRecord, Store

GOOD = """[
  Type = "Job";  JobType = "Normal";
  Executable = "run.sh";            // shipped in the sandbox
  Arguments = "-n 3 'two words'";
  StdOutput = "std.out"; StdError = "std.err";
  InputSandbox = {"run.sh", "file://data/in.txt"};
  OutputSandbox = {"out/result.txt"};
  Environment = {"MODE=fast", "EQ=a=b"};
  VirtualOrganisation = "dteam";
  RetryCount = 2;
  Requirements = other.GlueCEStateStatus == "Production" && member("x", other.Tags);
  Rank = -other.GlueCEStateEstimatedResponseTime;
  MyProxyServer = "myproxy.example.org";  # kept, not used
]
"""


# -- JDL -----------------------------------------------------------------------------------


def test_jdl_attributes_are_read() -> None:
    job = parse_job(GOOD, "good.jdl")
    assert job.executable == "run.sh" and job.arguments == "-n 3 'two words'"
    assert (job.std_output, job.std_error, job.std_input) == ("std.out", "std.err", None)
    assert job.input_sandbox == ("run.sh", "data/in.txt")
    assert job.output_sandbox == ("out/result.txt",)
    assert job.environment == (("MODE", "fast"), ("EQ", "a=b"))
    assert (job.virtual_organisation, job.retry_count) == ("dteam", 2)
    assert job.requirements == ('other.GlueCEStateStatus == "Production" && '
                                'member("x", other.Tags)')  # fmt: skip
    assert job.rank == "-other.GlueCEStateEstimatedResponseTime"
    assert job.extra == {"MyProxyServer": "myproxy.example.org"}


def test_jdl_without_brackets_and_case_insensitive_names() -> None:
    job = parse_job('executable = "/bin/echo";\nARGUMENTS = "hi"\n', "x.jdl")
    assert (job.executable, job.arguments) == ("/bin/echo", "hi")


@pytest.mark.parametrize(
    ("text", "where", "needle"),
    [
        ('[\n Executable = "/bin/x"\n Arguments = "y";\n]', "3:2", "missing ';'"),
        ("[ Executable = '/bin/x'; ]", "1:16", "double quotes"),
        ('[ Executable = "/bin/x";\n  StdOutput = "a"', "2:18", "unexpected end of file"),
        ('[ Executable = "/bin/x"; Executable = "/bin/y"; ]', "1:26", "given twice"),
        ('[ Executable = "/bin/x"; JobType = "MPICH"; ]', "1:26", 'only "Normal"'),
        ('[ Executable = "/bin/x"; JobType = "Interactive"; ]', "1:26", 'only "Normal"'),
        ('[ Executable = "/bin/x"; Type = "DAG"; ]', "1:26", "no DAGs"),
        ('[ Executable = "/bin/x"; StdOutput = "../a"; ]', "1:26", "inside the job directory"),
        ('[ Executable = "/bin/x"; OutputSandbox = {"/etc/x"}; ]', "1:26", "inside the job"),
        ('[ Executable = "/bin/x"; InputSandbox = {"gsiftp://h/x"}; ]', "1:26", "only local"),
        ('[ Executable = "/bin/x"; Environment = {"1A=b"}; ]', "1:26", "NAME=VALUE"),
        ('[ Executable = "/bin/x"; RetryCount = -1; ]', "1:26", "whole number"),
        ('[ Executable = "/bin/x"; Arguments = 3; ]', "1:26", "string literal"),
        ('[ Executable = "run.sh"; ]', "1", "list the file in InputSandbox"),
        ('[ Executable = "/bin/x"; Arguments = "\'open"; ]', "1", "quotation"),
        ('[ Arguments = "x"; ]', "1", "Executable is missing"),
        ('[ Executable = "a\\qb"; ]', "1:18", "unknown escape"),
    ],
)
def test_bad_jdl_gets_file_line_column(text: str, where: str, needle: str) -> None:
    with pytest.raises(JdlError) as err:
        parse_job(text, "bad.jdl")
    assert str(err.value).startswith(f"bad.jdl:{where}: "), str(err.value)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_job_script_quotes_everything() -> None:
    job = parse_job('[ Executable = "run.sh"; InputSandbox = {"run.sh"}; StdOutput = "o";'
                    ' Arguments = "a \'b c\' $HOME;rm"; Environment = {"X=1; id"}; ]')  # fmt: skip
    script = job_script(job)
    assert "export X='1; id'" in script
    assert "./run.sh a 'b c' '$HOME;rm' > o < /dev/null" in script
    assert "echo $rc > .wms/exit.tmp" in script


# -- delegation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPKI, User]:
    pki = TestPKI(tmp_path_factory.mktemp("wmspki"), reuse_keys=True)
    return pki, pki.user("alice", "/DC=org/DC=example/O=Users/CN=Alice Smith")


@pytest.mark.parametrize("kind", ["rfc", "limited", "legacy"])
@pytest.mark.parametrize("key_type", ["rsa2048", "ec-p256"])
def test_delegation_round_trip(site_pki: tuple[TestPKI, User], kind: str, key_type: str) -> None:
    pki, alice = site_pki
    parent = pki.proxy(alice, fqans=["/dteam/Role=NULL/Capability=NULL"],
                       limited=kind == "limited", legacy=kind == "legacy")  # fmt: skip
    key_pem, csr_pem = delegation.new_request(key_type)
    now = datetime.now(UTC)
    chain = delegation.sign_request(csr_pem, Path(parent).read_bytes(), now=now)
    assert b"PRIVATE KEY" not in chain  # no key crosses the network
    got = delegation.accept(chain, key_pem, TrustStore(pki.certdir), now=now)
    assert got.identity == alice.dn
    assert got.credential.limited == (kind == "limited")
    assert got.credential.proxy_type == (ProxyType.LEGACY if kind == "legacy"
                                         else ProxyType.RFC3820)  # fmt: skip
    reread = load_pem(got.pem)  # the file glexec gets: leaf, the CE's key, chain
    assert reread.key is not None and len(reread.chain) == 3
    parent_cred = load_pem(Path(parent).read_bytes())
    assert got.credential.leaf.not_valid_after_utc <= parent_cred.leaf.not_valid_after_utc


def test_delegation_refusals(site_pki: tuple[TestPKI, User]) -> None:
    pki, alice = site_pki
    parent = Path(pki.proxy(alice)).read_bytes()
    key_pem, csr_pem = delegation.new_request("ec-p256")
    other_key, _ = delegation.new_request("ec-p256")
    now = datetime.now(UTC)
    chain = delegation.sign_request(csr_pem, parent, now=now)
    trust = TrustStore(pki.certdir)
    with pytest.raises(delegation.DelegationError, match="not for this delegation's key"):
        delegation.accept(chain, other_key, trust, now=now)
    with pytest.raises(delegation.DelegationError, match="expired"):
        delegation.accept(chain, key_pem, trust, now=now + timedelta(days=2))
    certs = x509.load_pem_x509_certificates(parent)
    with pytest.raises(delegation.DelegationError, match="no private key"):
        delegation.sign_request(csr_pem, b"".join(c.public_bytes(
            __import__("cryptography").hazmat.primitives.serialization.Encoding.PEM)
            for c in certs), now=now)  # fmt: skip
    with pytest.raises(delegation.DelegationError, match="expired"):
        delegation.sign_request(csr_pem, parent, now=now + timedelta(days=2))
    other_ca = TestPKI(Path(pki.dir).parent / "other-ca", ca_dn="/DC=org/CN=Other CA")
    with pytest.raises(delegation.DelegationError, match="refused"):
        delegation.accept(chain, key_pem, TrustStore(other_ca.certdir), now=now)


# -- sandboxes ------------------------------------------------------------------------------


def test_input_sandbox_checks(tmp_path: Path) -> None:
    base = tmp_path / "job"
    (base / "data").mkdir(parents=True)
    (base / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(base / "run.sh", 0o755)
    (base / "data" / "in.txt").write_text("x" * 100)
    (tmp_path / "secret").write_text("no")
    os.symlink(tmp_path / "secret", base / "link")
    os.symlink(tmp_path, base / "dirlink")
    os.mkfifo(base / "fifo")
    cases = {
        "../secret": "relative path", "/etc/passwd": "relative path", "link": "symbolic link",
        "dirlink/secret": "not a directory", "nope": "no such file",
        "fifo": "not a regular file", "data": "not a regular",
    }  # fmt: skip
    for name, needle in cases.items():
        with pytest.raises(sandbox.SandboxError, match=needle):
            with sandbox.collect_input(str(base), [name], 1000):
                pass
    with pytest.raises(sandbox.SandboxError, match="over the limit of 99 bytes"):
        with sandbox.collect_input(str(base), ["data/in.txt"], 99):
            pass
    out = io.BytesIO()
    with sandbox.collect_input(str(base), ["run.sh", "data/in.txt"], 1000) as files:
        sandbox.write_tar(out, files)
    out.seek(0)
    got = sandbox.check_upload(out, ["run.sh", "data/in.txt"], 1000)
    assert [(f.name, f.size, f.mode & 0o111 != 0) for f in got] == [
        ("run.sh", 18, True), ("data/in.txt", 100, False)]  # fmt: skip


def _tar(*members: tarfile.TarInfo) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    buf.seek(0)
    return buf


def test_ce_upload_checks() -> None:
    def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 3) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, size if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/shadow"
        return info

    cases = [
        ([member("../a")], ["../a"], "escapes"),
        ([member("/abs")], ["/abs"], "escapes"),
        ([member("a", tarfile.SYMTYPE)], ["a"], "not a regular file"),
        ([member("a"), member("b")], ["a"], "not in the JDL"),
        ([member("a")], ["a", "b"], "'b' was not sent"),
        ([member("a", size=2000)], ["a"], "over the limit"),
    ]
    for members, declared, needle in cases:
        with pytest.raises(sandbox.SandboxError, match=needle):
            sandbox.check_upload(_tar(*members), declared, 1000)
    with pytest.raises(sandbox.SandboxError, match="tar"):
        sandbox.check_upload(io.BytesIO(b"not a tar" * 100), ["a"], 1000)


def test_output_never_follows_a_link_and_never_overwrites(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "std.out").write_text("out\n")
    (tmp_path / "secret").write_text("secret\n")
    os.symlink(tmp_path / "secret", job / "result.txt")
    data, missing = sandbox.collect_output(str(job), ["std.out", "result.txt", "gone"], 1000)
    assert [m.split(" ")[0] for m in missing] == ["result.txt", "gone"]
    dest = tmp_path / "dest"
    assert sandbox.extract_output(data, str(dest)) == ["std.out"]
    assert (dest / "std.out").read_text() == "out\n"
    with pytest.raises(sandbox.SandboxError, match="already exists"):
        sandbox.extract_output(data, str(dest))


# -- states -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "wrapper", "expected"),
    [
        ("JobId=5 JobState=PENDING Reason=None ExitCode=0:0", None, "Ready"),
        ("JobId=5 JobState=PENDING Reason=Resources ExitCode=0:0", None, "Scheduled (Resources)"),
        ("JobId=5 JobState=RUNNING Reason=None ExitCode=0:0", None, "Running"),
        ("JobId=5 JobState=COMPLETED Reason=None ExitCode=0:0", 0, "Done (Success)"),
        ("JobId=5 JobState=FAILED Reason=NonZero ExitCode=3:0", None, "Done (Exit Code 3)"),
        ("JobId=5 JobState=FAILED Reason=NonZero ExitCode=3:0", 7, "Done (Exit Code 7)"),
        ("JobId=5 JobState=FAILED Reason=None ExitCode=0:9", None, "Aborted (killed by signal 9)"),
        ("JobId=5 JobState=CANCELLED Reason=None ExitCode=0:15", None, "Cancelled"),
        ("JobId=5 JobState=TIMEOUT Reason=None ExitCode=0:0", None,
         "Aborted (the wall-clock limit was reached)"),
        ("JobId=5 JobState=NODE_FAIL Reason=None ExitCode=0:0", None, "Aborted (the node failed)"),
    ],
)  # fmt: skip
def test_states_from_slurm(line: str, wrapper: int | None, expected: str) -> None:
    assert states.from_slurm(parse_fields(line), wrapper).text() == expected


def test_vanished_job() -> None:
    assert states.vanished(0).text() == "Done (Success)"
    assert states.vanished(None).state == "Aborted"


# -- the CE's configuration and store -------------------------------------------------------


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "wms-ce.yaml"
    conf.write_text("listen: 127.0.0.1:1\npublic_url: http://x\ntls: {cert: nope.pem}\n"
                    "state_dir: rel\njob_dir: /j\nscas:\n  endpoints: [http://scas]\n"
                    "bogus: 1\ndelegation: {key: dsa}\n")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_config(str(conf))
    text = "\n".join(err.value.errors)
    for needle in (f"{conf}:2: public_url: must start with https://",
                   f"{conf}:3: tls.cert: {tmp_path}/nope.pem: no such file",
                   f"{conf}:4: state_dir: must be an absolute path",
                   f"{conf}:7: scas.endpoints: a non-empty list of https:// URLs",
                   f"{conf}:8: bogus: unknown key",
                   f"{conf}:9: delegation.key: 'dsa'"):  # fmt: skip
        assert needle in text, text


def test_example_config_loads() -> None:
    """conf/wms-ce.yaml parses; only the site's files are missing on a test machine."""
    path = Path(__file__).resolve().parent.parent / "conf" / "wms-ce.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert all("no such" in e for e in err.value.errors), err.value.errors


def test_store_keeps_final_states_and_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "ce.sqlite")
    store = Store(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    rec = JobRecord("j1", "/CN=a", "Waiting", "", None, None, "pool1", 1001, 1001, {}, "/w",
                    "/p", 1.0, 1.0)  # fmt: skip
    store.add_job(rec)
    assert store.update("j1", states.Status("Ready"), slurm_id="7")
    assert store.update("j1", states.done(3))
    assert not store.update("j1", states.Status("Running"))  # a late report changes nothing
    assert store.update("j1", states.Status("Cleared"))
    again = Store(path).job("j1")
    assert again is not None and (again.state, again.slurm_id) == ("Cleared", "7")
    assert [e[1] for e in Store(path).events("j1")] == ["Waiting", "Ready", "Done", "Cleared"]


def _tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_output_extraction_refuses_before_writing_anything(tmp_path: Path) -> None:
    """A name twice, a name that is also a directory, and a symlinked directory already in
    the destination are each refused with one line, and nothing is written."""
    twice = io.BytesIO()
    with tarfile.open(fileobj=twice, mode="w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("out.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    dest = tmp_path / "d1"
    with pytest.raises(sandbox.SandboxError, match="twice"):
        sandbox.extract_output(twice.getvalue(), str(dest))
    assert not dest.exists()
    with pytest.raises(sandbox.SandboxError, match="a file and a directory"):
        sandbox.extract_output(_tar_of({"a": b"1", "a/b": b"2"}), str(tmp_path / "d2"))
    assert not (tmp_path / "d2").exists()
    dest = tmp_path / "d3"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "sub").symlink_to(elsewhere)
    with pytest.raises(sandbox.SandboxError, match="symbolic link"):
        sandbox.extract_output(_tar_of({"sub/f": b"data"}), str(dest))
    assert list(elsewhere.iterdir()) == []
