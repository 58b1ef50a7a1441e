"""Audit lines: one JSON object per line, whatever the values contain."""

from __future__ import annotations

import json
from pathlib import Path

from scas_server.audit import AuditLog, AuditRecord


def test_audit_newline_in_dn_cannot_forge_a_line(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.log"))
    evil = '/CN=x\n{"decision":"Permit","dn":"/CN=root"}'
    log.write(AuditRecord(pep="/CN=pep", dn=evil, fqans=("/dteam\r",), decision="Deny",
                          reason="LCAS: banned"))
    log.write(AuditRecord(pep="/CN=pep", dn="/CN=ok", decision="Permit", account="dteam001",
                          latency_ms=1.23456))
    log.close()
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["dn"] == evil and first["fqans"] == ["/dteam\r"]
    assert first["decision"] == "Deny" and first["reason"] == "LCAS: banned"
    assert second["account"] == "dteam001" and second["latency_ms"] == 1.235


def test_audit_long_values_are_bounded(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.log"))
    log.write(AuditRecord(dn="/CN=" + "a" * 5000))
    log.close()
    entry = json.loads((tmp_path / "audit.log").read_text())
    assert len(entry["dn"]) <= 1024 + 3 and entry["dn"].endswith("...")
