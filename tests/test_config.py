"""scas_server.config: the server YAML is validated as a whole, `file: key: reason`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from scas_server.config import ConfigError, load_config


@pytest.fixture
def site(tmp_path: Path) -> Path:
    for name in ("hostcert.pem", "hostkey.pem", "lcas.db", "lcmaps.db"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "certificates").mkdir()
    return tmp_path


def _write(site: Path, **overrides: Any) -> str:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:8443",
        "tls": {"cert": "hostcert.pem", "key": "hostkey.pem", "ca_dir": "certificates"},
        "trust": {"certdir": "certificates"},
        "pep_allow": ["/DC=org/DC=example/CN=*"],
        "lcas": {"db": "lcas.db"},
        "lcmaps": {"db": "lcmaps.db"},
        "policies": [{"resource": "wn", "action": "execute-now", "lcmaps": "glexec"}],
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = site / "scas.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_config_valid_relative_paths_resolved(site: Path) -> None:
    cfg = load_config(_write(site))
    assert cfg.tls_cert == str(site / "hostcert.pem")
    assert cfg.lcmaps_db == str(site / "lcmaps.db")
    assert cfg.max_body == 1024 * 1024
    assert cfg.route("wn", "execute-now") is not None
    assert cfg.route("wn", "execute-now").lcmaps == ("glexec",)  # type: ignore[union-attr]
    assert cfg.route("ce", "queue") is None
    assert cfg.unix_socket is None


def test_config_unknown_keys_reported_with_file_and_key(site: Path) -> None:
    path = _write(site, tlss={"x": 1}, limits={"max_bodyy": 3})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: tlss: unknown key" in info.value.errors
    assert f"{path}: limits.max_bodyy: unknown key" in info.value.errors


def test_config_all_problems_reported_at_once(site: Path) -> None:
    path = _write(
        site,
        workers=0,
        listen="nowhere",
        tls={"cert": "missing.pem", "key": "hostkey.pem", "ca_dir": "certificates"},
        socket_mode="rw-",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.errors)
    assert f"{path}: workers: must be between 1 and 64" in text
    assert f"{path}: listen: expected HOST:PORT or unix:PATH" in text
    assert f"{path}: tls.cert: missing.pem: no such file" in text
    assert f"{path}: socket_mode: expected an octal mode" in text
    assert len(info.value.errors) == 4


def test_config_wrong_types_rejected(site: Path) -> None:
    path = _write(site, workers="two", pep_allow=[""], trust_pep_attributes="yes")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.errors)
    assert "workers: expected int, got str" in text
    assert "pep_allow: every pattern must be a non-empty string" in text
    assert "trust_pep_attributes: expected bool, got str" in text


def test_config_tls_required_for_tcp_but_not_unix(site: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls: missing section"):
        load_config(_write(site, tls=None))
    cfg = load_config(_write(site, tls=None, listen=f"unix:{site}/scas.sock", socket_mode="0600"))
    assert cfg.unix_socket == f"{site}/scas.sock"
    assert cfg.socket_mode == 0o600


def test_config_pep_allow_required_for_tcp(site: Path) -> None:
    with pytest.raises(ConfigError, match=r"pep_allow: missing"):
        load_config(_write(site, pep_allow=None))


def test_config_yaml_syntax_error_has_line(site: Path) -> None:
    path = site / "scas.yaml"
    path.write_text("listen: 127.0.0.1:8443\ntls: [unclosed\nworkers: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors[0].startswith(f"{path}:")
    assert info.value.errors[0].split(":")[1].isdigit()


def test_config_top_level_must_be_mapping(site: Path) -> None:
    path = site / "scas.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(path))


def test_config_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent.yaml"))
    assert str(info.value) == f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"


def test_config_ticket_lifetime_bounded(site: Path) -> None:
    (site / "ticket.key").write_text("k\n")
    with pytest.raises(ConfigError, match=r"ticket.lifetime: must be between 1 and 270"):
        load_config(_write(site, ticket={"key": "ticket.key", "lifetime": 600}))
    cfg = load_config(_write(site, ticket={"key": "ticket.key"}))
    assert cfg.ticket is not None and cfg.ticket.lifetime == 120


def test_config_policy_entries_checked(site: Path) -> None:
    path = _write(site, policies=[{"resource": "wn", "lcmaps": []}, "x"])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.errors)
    assert "policies[0].action: missing" in text
    assert "policies[0].lcmaps: at least one policy name" in text
    assert "policies[1]: must be a mapping" in text


def test_config_audit_directory_must_exist(site: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit.file: .*directory does not exist"):
        load_config(_write(site, audit={"file": "nodir/audit.log"}))
    cfg = load_config(_write(site, audit={"file": "audit.log"}))
    assert cfg.audit_file == os.path.join(site, "audit.log")


def test_config_check_command_reports_lcmaps_line(site: Path, capsys: Any) -> None:
    from scas_server.cli import main

    (site / "lcas.db").write_text("# a valid, empty LCAS chain\n")
    (site / "lcmaps.db").write_text("good = \"lcmaps_dummy_good.mod\"\n\nglexec:\ngood ->\n")
    rc = main(["--config", _write(site, tls=None, listen="unix:/tmp/x.sock"), "--check"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"{site / 'lcmaps.db'}:5: syntax error")


@pytest.mark.parametrize("value", [-1, 61, "soon"])
def test_config_refuses_bad_recheck_seconds(site: Path, value: Any) -> None:
    """``trust.recheck_seconds``: how stale a CRL may be, so only 0..60 seconds."""
    path = _write(site, trust={"certdir": "certificates", "recheck_seconds": value})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("trust.recheck_seconds" in e for e in info.value.errors), info.value.errors


@pytest.mark.parametrize(("value", "seconds"), [(None, 1.0), (0, 0.0), (0.5, 0.5), (60, 60.0)])
def test_config_recheck_seconds_default_and_bounds(site: Path, value: Any, seconds: float) -> None:
    trust: dict[str, Any] = {"certdir": "certificates"}
    if value is not None:
        trust["recheck_seconds"] = value
    assert load_config(_write(site, trust=trust)).recheck_seconds == seconds
