"""Freeze what `build_request` writes, byte for byte, into request_vectors.json.

The vectors were made with the lxml builder, before the client's request builder became
stdlib text (client/xacml_text.py: glexec's start-up time). tests/test_client_lean.py
replays every input through today's builder and compares the bytes, or the exception
(class and message) for the inputs that must be refused.

Run from the repository root: ``python tests/vectors/make_request_vectors.py [--force]``.
Regenerating after the switch would only compare the text builder with itself, so the file
is not overwritten without --force.
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from client import xacml_ids as ids
from client.xacml_request import build_request

OUT = Path(__file__).with_name("request_vectors.json")
NOW = "2026-11-22T07:19:14+00:00"
B64 = "MIIDdzCCAl+gAwIBAgIJAKexample0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
CHAIN = (
    f"-----BEGIN CERTIFICATE-----\n{B64}\n{B64[:40]}==\n-----END CERTIFICATE-----\n"
    f"-----BEGIN CERTIFICATE-----\n{B64[::-1]}\n-----END CERTIFICATE-----\n"
)
JANE = "/DC=org/DC=example/OU=People/CN=Jane Doe 12345"
WN = "/DC=org/DC=example/OU=Hosts/CN=wn01.example.org"
PILOT = "/DC=org/DC=example/OU=Robots/CN=pilot robot"
MARKUP = "/dteam/R&D<x>\"q\"'a'"
UNICODE = "/dteam/Zürich/Ελλάδα/日本/😀\u2028\x7f\x85"
GLEXEC = [*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET]


def _case(name: str, **kwargs: object) -> dict[str, object]:
    return {"name": name, "kwargs": {"now": NOW, "request_id": f"ID-{name}", **kwargs}}


# fmt: off
CASES = [
    _case("minimal-dn", subject_dn=JANE),
    _case("chain-bytes", subject_dn=None, cert_chain=CHAIN, chain_as_bytes=True),
    _case("chain-str-crlf", subject_dn=None, cert_chain=CHAIN.replace("\n", "\r\n")),
    _case("glexec", subject_dn=None, cert_chain=CHAIN, chain_as_bytes=True, host="wn7",
          oblig_supported=GLEXEC, return_context=False, caller_uid=40001),
    _case("pilot", subject_dn=JANE, pilot_dn=PILOT, host="wn01.example.org", pep_dn=WN),
    _case("fqans-markup", subject_dn=JANE, fqans=[MARKUP, "/dteam/Role=NULL"]),
    _case("fqans-unicode", subject_dn=JANE, fqans=[UNICODE, "/ops"]),
    _case("fqan-root-only", subject_dn=JANE, fqans=["/"]),
    _case("vo-explicit", subject_dn=JANE, vo="atlas", fqans=["/dteam"]),
    _case("fqans-no-subject", subject_dn=None, fqans=["/dteam"]),
    _case("subject-issuer", subject_dn=JANE, subject_issuer="/CN=CA & <Co>"),
    _case("issuer-only", subject_dn=JANE, issuer="/CN=issuer \"q\" 'a' <&>"),
    _case("issuer-and-pep", subject_dn=JANE, issuer="/CN=I", pep_dn="/CN=P"),
    _case("soap12", subject_dn=JANE, soap12=True),
    _case("query-ns-os", subject_dn=JANE, query_ns=ids.NS_XACML_SAMLP_OS),
    _case("soap12-os", subject_dn=None, cert_chain=CHAIN, soap12=True,
          query_ns=ids.NS_XACML_SAMLP_OS, return_context=False),
    _case("uris", subject_dn=JANE, resource="urn:x:resource", action="urn:x:action"),
    _case("ce-queue", subject_dn=JANE, resource="ce", action="queue"),
    _case("caller-uid-0", subject_dn=JANE, caller_uid=0),
    _case("caller-uid-max", subject_dn=JANE, caller_uid=ids.MAX_UID),
    _case("oblig-dup-empty", subject_dn=JANE, oblig_supported=[ids.OBLIG_UIDGID] * 3),
    _case("oblig-none", subject_dn=JANE, oblig_supported=[]),
    _case("extras", subject_dn=JANE, extra_attributes=[
        ["subject", "urn:x:a&b", "v<1>"], ["resource", "urn:x:\"r\"", "tab\there"],
        ["action", "urn:x:cr", "a\rb\nc"], ["environment", "urn:x:e", ""],
        ["environment", "urn:x:\n\t\r", "]]>"]]),
    _case("whitespace-values", subject_dn=" /CN=spaced \n", host="\th\t", pilot_dn="\r\n"),
    _case("long-value", subject_dn="/CN=" + "x" * 10000),
    _case("attr-escapes", subject_dn=JANE, request_id="ID-\"<&>'\t\n\r"),
    _case("now-offset", subject_dn=JANE, now="2026-01-01T01:30:00+02:00"),
    _case("empty-strings", subject_dn=JANE, host="", pep_dn="", pilot_dn="", vo=""),
    _case("astral", subject_dn="/CN=\U0010ffff\U0001f600\ue000\ufffd", host="日本"),
    _case("everything", subject_dn=JANE, cert_chain=CHAIN, chain_as_bytes=True,
          fqans=[MARKUP, UNICODE], vo="dteam", resource="se", action="access",
          host="wn01.example.org", pep_dn=WN, oblig_supported=GLEXEC, subject_issuer="/CN=CA",
          pilot_dn=PILOT, issuer="/CN=issuer", return_context=True,
          extra_attributes=[["subject", "urn:x:s", "s"]], soap12=True, caller_uid=7),
    # refused: the exception class and message must stay the same
    _case("bad-ctrl-dn", subject_dn="/CN=evil\x01"),
    _case("bad-vt-fqan", subject_dn=JANE, fqans=["/dteam\x0b"]),
    _case("bad-ctrl-vo", subject_dn=JANE, vo="d\x1fteam"),
    _case("bad-fffe-host", subject_dn=JANE, host="h\ufffe"),
    _case("bad-ffff-pilot", subject_dn=JANE, pilot_dn="\uffff"),
    _case("bad-surrogate-dn", subject_dn="/CN=\ud800x"),
    _case("bad-ctrl-and-surrogate", subject_dn="\ud800\x01"),
    _case("bad-ctrl-request-id", subject_dn=JANE, request_id="ID-\x01"),
    _case("bad-surrogate-request-id", subject_dn=JANE, request_id="ID-\udfff"),
    _case("bad-ctrl-issuer", subject_dn=JANE, issuer="/CN=\x00"),
    _case("bad-ffff-issuer", subject_dn=JANE, pep_dn="/CN=\uffff"),
    _case("bad-extra-id", subject_dn=JANE, extra_attributes=[["action", "urn:\x02", "v"]]),
    _case("bad-extra-category", subject_dn=JANE, extra_attributes=[["subjekt", "urn:x", "v"]]),
    _case("bad-query-ns", subject_dn=JANE, query_ns="urn:x:not-a-query-namespace"),
    _case("bad-uid-negative", subject_dn=JANE, caller_uid=-1),
    _case("bad-uid-bool", subject_dn=JANE, caller_uid=True),
    _case("bad-uid-big", subject_dn=JANE, caller_uid=ids.MAX_UID + 1),
    _case("bad-uid-text", subject_dn=JANE, caller_uid="5"),
    _case("bad-no-subject", subject_dn=None, host="wn"),
    _case("bad-chain-non-ascii", subject_dn=None, cert_chain="é", chain_as_bytes=True),
    _case("bad-no-subject-and-bad-extra", subject_dn=None,
          extra_attributes=[["nowhere", "urn:x", "v"]]),
]
# fmt: on


def arguments(kwargs: dict[str, object]) -> dict[str, object]:
    """The JSON form of a case as build_request keyword arguments."""
    args = dict(kwargs)
    args["now"] = datetime.fromisoformat(str(args["now"]))
    if args.pop("chain_as_bytes", False):
        args["cert_chain"] = str(args["cert_chain"]).encode("utf-8")
    if "extra_attributes" in args:
        extra = args["extra_attributes"]
        assert isinstance(extra, list)
        args["extra_attributes"] = [tuple(item) for item in extra]
    return args


def outcome(kwargs: dict[str, object]) -> dict[str, str]:
    """{"output": base64 bytes} or {"error": class name, "message": str(exc)}."""
    try:
        body = build_request(**arguments(kwargs))  # type: ignore[arg-type]
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"output": base64.b64encode(body).decode("ascii")}


def main(argv: list[str]) -> int:
    if OUT.exists() and "--force" not in argv:
        print(f"{OUT} exists; --force overwrites it", file=sys.stderr)
        return 1
    vectors = [{**case, **outcome(case["kwargs"])} for case in CASES]  # type: ignore[arg-type]
    OUT.write_text(json.dumps(vectors, indent=1, ensure_ascii=True) + "\n", encoding="ascii")
    refused = sum("error" in v for v in vectors)
    print(f"{OUT}: {len(vectors)} vectors ({refused} refused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
