"""``glexec``: run a payload under its owner's account (the front half, as the pilot).

In:  ``glexec [OPTIONS] /ABS/CMD [ARGS...]`` (options only before the command; the command's
     arguments pass through untouched), the environment (GLEXEC_CLIENT_CERT and friends),
     glexec.conf.
Out: exec of the setuid helper, which runs the payload and exits with its status; or one of
     the exit codes 201 (caller), 202 (system) and 203 (refused) with a one-line reason on
     stderr, in syslog, and as a JSON status record where ``--status-file``/``--status-fd``
     points.

Flow: options -> config -> environment -> inputs (proxies, command, target proxy) -> caller
on user_white_list -> helper present -> SCAS (client library) -> exec the helper with the
ticket and the proxy on inherited descriptors. Imports stay light until SCAS is asked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from glexec import config as conf
from glexec.status import CALLER, REFUSED, SYSTEM, GlexecError, StatusSink

PROG = "glexec"
USAGE = """\
usage: glexec [OPTIONS] /ABS/COMMAND [ARGS...]   run COMMAND as the payload's owner
       glexec [OPTIONS]                          refresh GLEXEC_TARGET_PROXY
       glexec -h | -v | -V | --check-config

options (before the command; everything after it is the command's):
  --env NAME=VALUE   pass a variable to the payload (repeatable); NAME must be in
                     preserve_env_variables, never LD_*, MALLOC_*, PYTHON*, GCONV_PATH...
  --env-file FILE    variables from FILE: a JSON object of strings, or NAME=VALUE lines
  --status-file FILE write the JSON status record to FILE
  --status-fd K      write it to inherited descriptor K (>= 3)
  --workdir DIR      hand-over: create DIR (new; in a directory of yours) for the payload,
                     owned by the target with your group (2770); the payload starts in it
                     and you can read what it leaves there
  --                 end of options
  -h, --help         this text;  -v, --version   the version
  -V                 the effective settings (config file, keys, environment)
  --check-config     validate glexec.conf (also against the setuid helper's parser)

environment:
  GLEXEC_CLIENT_CERT   the payload's proxy (cert, unencrypted key, chain; owned by the
                       caller, mode 0600/0400)
  GLEXEC_SOURCE_PROXY  the same proxy by its other name (if both are set: the same bytes)
  GLEXEC_TARGET_PROXY  where the target gets its copy (absolute; /dev/null or unset: none)
  X509_USER_PROXY      the pilot's own proxy: glexec's TLS identity towards SCAS
  X509_CERT_DIR        CA directory for SCAS's certificate (certdir in glexec.conf wins)
  GLEXEC_CONFIG        another glexec.conf for this front (never for the helper)

exit: the payload's status (128+N: signal N); 201 caller error, 202 system error (retry),
      203 refused, 204 the payload exited 201-204, 126 it could not be executed.
"""


class Options:
    """The parsed command line: what to do, the front's options, the command."""

    def __init__(self) -> None:
        self.action = "run"  # run, help, version, settings, check
        self.env: list[str] = []
        self.env_files: list[str] = []
        self.status_file: str | None = None
        self.status_fd: str | None = None
        self.workdir: str | None = None
        self.command: list[str] = []


_WITH_VALUE = ("--env", "--env-file", "--status-file", "--status-fd", "--workdir")
_FLAGS = {
    "-h": "help",
    "--help": "help",
    "-v": "version",
    "--version": "version",
    "-V": "settings",
    "--check-config": "check",
}


def parse_args(argv: Sequence[str], opts: Options | None = None) -> Options:
    """Options up to the first non-option (or ``--``); the rest is the command, untouched.

    Fills `opts` as it goes, so a usage error still knows the status options before it.
    """
    opts = Options() if opts is None else opts
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if arg in _FLAGS:
            opts.action = _FLAGS[arg]
            i += 1
            continue
        if name not in _WITH_VALUE:
            raise GlexecError(CALLER, "usage", f"unknown option {arg[:64]!r} (glexec -h)")
        if not eq:
            if i + 1 >= len(argv):
                raise GlexecError(CALLER, "usage", f"{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name == "--env":
            opts.env.append(value)
        elif name == "--env-file":
            opts.env_files.append(value)
        elif getattr(opts, name[2:].replace("-", "_")) is not None:
            raise GlexecError(CALLER, "usage", f"{name} given twice")
        else:
            setattr(opts, name[2:].replace("-", "_"), value)
    opts.command = list(argv[i:])
    if opts.status_file is not None and opts.status_fd is not None:
        raise GlexecError(CALLER, "usage", "--status-file and --status-fd exclude each other")
    return opts


def _log(cfg: conf.Config | None, message: str) -> None:
    """One line on stderr (unless silent_logging) and, at log_level >= 1, in syslog."""
    if cfg is None or not cfg["silent_logging"]:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    if cfg is not None and int(cfg["log_level"]) >= 1:  # type: ignore[call-overload]
        import syslog

        facility = getattr(syslog, str(cfg["syslog_facility"]), syslog.LOG_AUTHPRIV)
        syslog.openlog(PROG, syslog.LOG_PID, facility)
        syslog.syslog(syslog.LOG_NOTICE, message)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scas-stack")
    except PackageNotFoundError:
        return "unknown"


def show_settings(environ: dict[str, str] | os._Environ[str]) -> int:
    """``-V``: the config path and where it came from, then every key's effective value."""
    path, overridden = conf.config_path(environ)
    print(f"GLEXEC_CONFIG_FILE={path}")
    print(f"GLEXEC_CONFIG_SOURCE={'$GLEXEC_CONFIG' if overridden else 'built-in'}")
    print(f"GLEXEC_VERSION={_version()}")
    for var in (
        "GLEXEC_CLIENT_CERT",
        "GLEXEC_SOURCE_PROXY",
        "GLEXEC_TARGET_PROXY",
        "X509_USER_PROXY",
        "X509_CERT_DIR",
    ):
        print(f"{var}={environ.get(var, '')}")
    try:
        cfg = conf.load(environ)
    except GlexecError as exc:
        print(f"{PROG}: {exc.reason}", file=sys.stderr)
        return exc.code
    from glexec.scas import certdir, host_name

    print(f"host={host_name()}")
    print(f"caller_uid={os.getuid()}")
    print(f"scas_ca_dir={certdir(cfg, environ)[0]}")
    for key in conf.KEYS:
        value = cfg[key]
        if isinstance(value, tuple):
            value = ", ".join(value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        mark = "" if key in cfg.given else "   # default"
        if value is not None or key in cfg.given:
            print(f"{key} = {value}{mark}")
    return 0


def check_config(environ: dict[str, str] | os._Environ[str]) -> int:
    """``--check-config``: 0 if the file is valid for both halves, else 202 naming the key."""
    cfg = conf.load(environ)
    print(f"{cfg.path}: OK ({len(cfg.given)} keys; endpoints: {', '.join(cfg.endpoints)})")
    return 0


def _caller_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _whitelisted(cfg: conf.Config, name: str) -> bool:
    for entry in cfg["user_white_list"]:  # type: ignore[attr-defined]
        if name == entry or (
            entry.startswith(".")
            and name.startswith(entry[1:])
            and name[len(entry) - 1 :].isdigit()
            and name.isascii()
        ):
            return True
    return False


def run(
    opts: Options, cfg: conf.Config, sink: StatusSink, environ: dict[str, str] | os._Environ[str]
) -> None:
    """The flow after the config: execs the helper, or raises GlexecError (never returns)."""
    from glexec import handover, inputs, scas

    uid = os.getuid()
    env = inputs.payload_env(cfg, environ, opts.env_files, opts.env)
    refresh = not opts.command
    lock = cfg.input_lock()
    optional = _caller_name(uid) in cfg["omission_private_key_white_list"]  # type: ignore[operator]
    proxies = [
        inputs.read_proxy(var, environ[var], uid=uid, lock=lock, key_optional=optional)
        for var in ("GLEXEC_CLIENT_CERT", "GLEXEC_SOURCE_PROXY")
        if var in environ
    ]
    if not proxies:
        raise GlexecError(
            CALLER, "input", "no proxy: set GLEXEC_CLIENT_CERT to the payload's proxy file"
        )
    if len(proxies) == 2 and proxies[0].pem != proxies[1].pem:
        raise GlexecError(
            CALLER,
            "input",
            "GLEXEC_CLIENT_CERT and GLEXEC_SOURCE_PROXY hold "
            "different proxies: the helper copies only the proxy SCAS verified",
        )
    proxy = proxies[-1]
    target = None
    if cfg["create_target_proxy"]:
        target = inputs.check_target_proxy(environ.get("GLEXEC_TARGET_PROXY", ""), refresh=refresh)
    if refresh and target is None:
        raise GlexecError(
            CALLER,
            "usage",
            "no command: glexec without a command refreshes "
            "GLEXEC_TARGET_PROXY, which is not set (or create_target_proxy = no)",
        )
    if not refresh:
        inputs.check_command(cfg, opts.command[0])
    if refresh:
        os.chdir("/")  # mv runs as the target, which may not reach the pilot's cwd
    workdir = None if refresh or opts.workdir is None else inputs.open_workdir(opts.workdir)
    if not proxy.has_key:
        raise GlexecError(
            REFUSED,
            "input",
            (
                f"{proxy.path} holds no private key: the caller is on "
                "omission_private_key_white_list, but the helper runs nothing without proof of "
                "possession of the payload's key, so SCAS is not asked"
            ),
        )
    name = _caller_name(uid)
    if not _whitelisted(cfg, name):
        raise GlexecError(
            REFUSED, "whitelist", f"caller {name or '?'} (uid {uid}) is not in user_white_list"
        )
    helper = handover.check_helper(cfg)
    ticket, _ = scas.ask(cfg, proxy, uid=uid, environ=environ)
    command, linger = opts.command, None
    if refresh:
        assert target is not None
        target, command = handover.refresh_command(target)
        linger = False
    handover.execute(
        cfg,
        helper,
        ticket=ticket,
        proxy_pem=proxy.pem,
        status_fd=sink.for_helper(),
        target_proxy=target,
        env=env,
        command=command,
        linger=linger,
        workdir=workdir,
    )


def _std_fds() -> None:
    """0-2 open (on /dev/null if not), so no descriptor of ours can land on them."""
    for fd in range(3):
        try:
            os.fstat(fd)
        except OSError:
            os.open("/dev/null", os.O_RDWR)


def _sink(opts: Options) -> StatusSink:
    """The status record's destination; nowhere if the pilot named a bad one (stderr says)."""
    try:
        if opts.status_file is not None and opts.status_fd is None:
            return StatusSink.open_file(opts.status_file)
        if opts.status_fd is not None and opts.status_file is None:
            return StatusSink.inherited(opts.status_fd)
    except GlexecError as exc:
        _log(None, exc.reason)
        raise SystemExit(exc.code) from None
    return StatusSink()


def main(argv: Sequence[str] | None = None) -> int:
    _std_fds()
    environ = os.environ
    sink = StatusSink()
    cfg: conf.Config | None = None
    opts = Options()
    try:
        try:
            parse_args(sys.argv[1:] if argv is None else argv, opts)
        finally:
            sink = _sink(opts)
        if opts.action == "help":
            print(USAGE, end="")
            return 0
        if opts.action == "version":
            print(f"{PROG} (scas-stack) {_version()}")
            return 0
        if opts.action == "settings":
            return show_settings(environ)
        if opts.action == "check":
            return check_config(environ)
        cfg = conf.load(environ)
        run(opts, cfg, sink, environ)
        return SYSTEM  # not reached: run() execs the helper or raises
    except GlexecError as exc:
        _log(cfg, exc.reason)
        sink.write(exc.phase, exc.code, exc.reason)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
