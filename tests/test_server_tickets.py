"""glexec tickets from a central SCAS over real mutual TLS (docs/ticket.md, version 2).

The pilot's own VOMS proxy is the TLS identity; glexec states its uid in the query
(x-scas-stack/caller-uid) and advertises the ticket obligation. SCAS signs the stated uid only
for PEPs on the ticket allow-list (ticket.pep_allow on the identity DN, ticket.pep_fqans on the
PEP proxy's verified FQANs), binds the ticket to the PEP's dns-host-name and to the leaf of the
payload chain it verified, and otherwise answers Permit without a ticket, saying why in the
audit line. The first tests check the request attribute itself, without a server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from server_harness import PEP_DN, USER_DN, Server, Site

from client import xacml
from client.xacml import ids
from client.xacml_errors import MalformedQuery
from scas_server import ticket as tickets
from scas_server.config import ConfigError, load_config

NOBODY = 65534  # an account that exists, so the mapping has a user name for the ticket
PILOT_DN = "/DC=org/DC=example/O=Users/CN=Pilot Factory"
GLEXEC_PEP_DN = "/DC=org/DC=example/CN=pep-glexec.example.org"
PILOT_UID = 1001
WN = "WN07.Example.ORG"  # the signer lower-cases it
OBLIGATIONS = (*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET)
PILOT_FQAN = "/dteam/Role=pilot/Capability=NULL"

slow = pytest.mark.slow


# -- the request attribute ---------------------------------------------------------------------


def _request(caller_uid: int | None = None, extra: Sequence[tuple[str, str, str]] = ()) -> bytes:
    return xacml.build_request(
        subject_dn=USER_DN, oblig_supported=OBLIGATIONS, caller_uid=caller_uid,
        extra_attributes=extra,
    )  # fmt: skip


@pytest.mark.parametrize("uid", [0, 1, 1001, 65534, 4294967294])
def test_caller_uid_roundtrip(uid: int) -> None:
    body = _request(uid)
    assert ids.ATTR_CALLER_UID == (
        "http://authz-interop.org/xacml/attribute/x-scas-stack/caller-uid"
    )
    assert f'AttributeId="{ids.ATTR_CALLER_UID}" DataType="{ids.DT_INTEGER}"'.encode() in body
    request = xacml.parse_request(body)
    assert request.caller_uid == uid
    assert request.values("environment", ids.ATTR_CALLER_UID) == (str(uid),)


def test_caller_uid_absent_is_none() -> None:
    assert xacml.parse_request(_request()).caller_uid is None
    assert ids.ATTR_CALLER_UID.encode() not in _request()


def test_caller_uid_same_value_twice_is_one() -> None:
    extra = [("environment", ids.ATTR_CALLER_UID, " 1001 ")]
    assert xacml.parse_request(_request(1001, extra)).caller_uid == 1001


BAD_UIDS = (
    "", " ", "abc", "-1", "+1001", "01001", "00", "1001.0", "1e3", "0x10", "1 001",
    "4294967295", "99999999999", "\u0661\u0660",
)  # fmt: skip


@pytest.mark.parametrize("value", BAD_UIDS)
def test_caller_uid_strict_syntax(value: str) -> None:
    body = _request(extra=[("environment", ids.ATTR_CALLER_UID, value)])
    with pytest.raises(MalformedQuery) as info:
        xacml.parse_request(body)
    assert info.value.status_code == ids.STATUS_SYNTAX_ERROR and not info.value.fault


def test_caller_uid_two_values_conflict() -> None:
    body = _request(1001, [("environment", ids.ATTR_CALLER_UID, "1002")])
    with pytest.raises(MalformedQuery) as info:
        xacml.parse_request(body)
    assert info.value.status_code == ids.STATUS_SYNTAX_ERROR


def test_caller_uid_in_another_category_is_not_read() -> None:
    body = _request(extra=[("subject", ids.ATTR_CALLER_UID, "1001")])
    assert xacml.parse_request(body).caller_uid is None


@pytest.mark.parametrize("bad", [-1, 4294967295, True, "1001", 1.0])
def test_build_request_refuses_bad_caller_uid(bad: object) -> None:
    with pytest.raises(ValueError, match="caller_uid"):
        _request(bad)  # type: ignore[arg-type]


# -- the ticket section of the server configuration ----------------------------------------------


def test_config_ticket_allow_lists(tmp_path: Path) -> None:
    site = Site(str(tmp_path))
    private, _, _ = tickets.keygen(site.directory)
    site.write_config(ticket={
        "key": str(private), "lifetime": 60, "pep_allow": [GLEXEC_PEP_DN],
        "pep_fqans": ["/*/Role=pilot", "/dteam/Role=lcgadmin"],
    })  # fmt: skip
    cfg = load_config(site.config_path).ticket
    assert cfg is not None and (cfg.key, cfg.lifetime, cfg.host) == (str(private), 60, None)
    assert cfg.pep_allow == (GLEXEC_PEP_DN,)
    assert cfg.pep_fqans == ("/*/Role=pilot", "/dteam/Role=lcgadmin")
    site.write_config(ticket={"key": str(private)})
    cfg = load_config(site.config_path).ticket
    assert cfg is not None and cfg.pep_allow == () and cfg.pep_fqans == ()


def test_config_ticket_errors_name_file_and_key(tmp_path: Path) -> None:
    site = Site(str(tmp_path))
    site.write_config(ticket={
        "key": "missing.key", "pep_allow": "/CN=not-a-list", "pep_fqans": ["dteam/Role=pilot"],
        "host": "wn 01", "pep_allowed": [],
    })  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(site.config_path)
    path = site.config_path
    assert info.value.errors == [
        f"{path}: ticket.pep_allowed: unknown key",
        f"{path}: ticket.key: missing.key: no such file",
        f"{path}: ticket.host: must be a DNS host name",
        f"{path}: ticket.pep_allow: expected list, got str",
        f'{path}: ticket.pep_fqans: every FQAN pattern must start with "/" (e.g. "/*/Role=pilot")',
    ]
    site.write_config(ticket={"key": "k", "pep_fqans": ["", "/x"]})
    with pytest.raises(ConfigError, match=r"ticket\.pep_fqans: every pattern must be a non-empty"):
        load_config(path)


# -- a central SCAS over mutual TLS ------------------------------------------------------------


@dataclass
class Central:
    site: Site
    server: Server
    public_line: str
    payload: str  # the payload owner's proxy file (cert, key, chain)
    payload_chain: bytes  # what the query carries: the certificates only
    pilot: str  # the pilot's VOMS proxy with /dteam/Role=pilot: its TLS credential
    member: str  # a VOMS proxy of the same person without the pilot role
    plain: str  # a proxy without VOMS attributes
    forged: str  # a proxy claiming the pilot role in an AC that does not verify
    glexec_pep: tuple[str, str]  # a host certificate on ticket.pep_allow


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    site = Site(str(tmp_path_factory.mktemp("scas-tickets")))
    site.write_lcmaps(uid=NOBODY, gid=NOBODY, sgid=NOBODY)
    site.pki.trust_vo("dteam")  # the server must trust the VOMS server of the pilot's VO
    pilot_user = site.pki.user("pilot", PILOT_DN)
    glexec_host = site.pki.host("pep-glexec.example.org", GLEXEC_PEP_DN)
    private, _, public_line = tickets.keygen(site.directory)
    settings = site.write_config(
        pep_allow=["/DC=org/DC=example/CN=pep*", PILOT_DN],
        trust={"certdir": site.pki.certdir, "vomsdir": site.pki.vomsdir},
        ticket={
            "key": str(private),
            "pep_allow": ["/DC=org/DC=example/CN=pep-glexec.*"],
            "pep_fqans": ["/*/Role=pilot"],
        },
    )  # fmt: skip
    payload = site.pki.proxy(site.user, fqans=["/dteam/Role=NULL/Capability=NULL"])
    certs = x509.load_pem_x509_certificates(Path(payload).read_bytes())
    central = Central(
        site=site,
        server=Server(site, settings),
        public_line=public_line,
        payload=payload,
        payload_chain=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs),
        pilot=site.pki.proxy(pilot_user, fqans=[PILOT_FQAN], vo="dteam"),
        member=site.pki.proxy(pilot_user, fqans=["/dteam/Role=NULL/Capability=NULL"]),
        plain=site.pki.proxy(pilot_user),
        forged=site.pki.proxy(pilot_user, fqans=[PILOT_FQAN], ac_forged=True),
        glexec_pep=(glexec_host.cert_path, glexec_host.key_path),
    )
    yield central
    central.server.stop()


def _ask(
    c: Central, cert: tuple[str, str] | str, *, caller_uid: int | None = PILOT_UID,
    host: str | None = WN, oblig: Sequence[str] = OBLIGATIONS,
    extra: Sequence[tuple[str, str, str]] = (),
) -> tuple[xacml.Decision, dict[str, object]]:  # fmt: skip
    body = xacml.build_request(
        subject_dn=USER_DN, cert_chain=c.payload_chain, host=host, oblig_supported=oblig,
        caller_uid=caller_uid, extra_attributes=extra,
    )  # fmt: skip
    status, reply = c.server.post(body, cert=cert)
    assert status == 200, reply
    return xacml.parse_response(reply), c.site.audit_lines()[-1]


def _verify(c: Central, ticket: str | None) -> tickets.Ticket:
    assert ticket is not None
    return tickets.verify_ticket(
        ticket, c.public_line, now=time.time(), host=WN, caller_uid=PILOT_UID,
        proxy_sha256=tickets.proof_of_possession(Path(c.payload).read_bytes()),
    )  # fmt: skip


@slow
def test_pilot_voms_proxy_gets_v2_ticket_for_stated_uid(central: Central) -> None:
    decision, line = _ask(central, central.pilot)
    assert decision.decision == "Permit" and decision.username == "nobody"
    fields = _verify(central, decision.ticket)
    assert fields.version == 2 and fields.caller_uid == PILOT_UID
    assert fields.host == "wn07.example.org"
    leaf = x509.load_pem_x509_certificates(central.payload_chain)[0]
    assert fields.proxy_sha256 == tickets.leaf_sha256(leaf)
    assert (fields.user, fields.uid, fields.gid) == ("nobody", NOBODY, NOBODY)
    assert fields.subject == USER_DN
    assert line["pep"] == PILOT_DN and line["decision"] == "Permit"
    assert line["stated_caller_uid"] == PILOT_UID and line.get("caller_uid") is None
    assert line["ticket_nonce"] == fields.nonce
    assert line["ticket_proxy_sha256"] == fields.proxy_sha256
    assert "ticket" not in line  # no refusal reason


@slow
def test_ticket_is_bound_to_the_payload_leaf(central: Central) -> None:
    """Knowing the payload's public chain is not enough: another proxy (another leaf, or
    the chain without its key) fails the helper's proof of possession."""
    decision, _ = _ask(central, central.pilot)
    assert decision.ticket is not None
    other = central.site.pki.proxy(central.site.user)
    with pytest.raises(tickets.TicketWrongProxy):
        tickets.verify_ticket(
            decision.ticket, central.public_line, now=time.time(), host=WN,
            caller_uid=PILOT_UID,
            proxy_sha256=tickets.proof_of_possession(Path(other).read_bytes()),
        )  # fmt: skip
    with pytest.raises(tickets.TicketWrongProxy):
        tickets.proof_of_possession(central.payload_chain)
    with pytest.raises(tickets.TicketWrongCaller):  # and it is the stated uid's, no one else's
        tickets.verify_ticket(
            decision.ticket, central.public_line, now=time.time(), host=WN, caller_uid=0
        )


@slow
def test_host_certificate_on_ticket_pep_allow_gets_ticket(central: Central) -> None:
    decision, line = _ask(central, central.glexec_pep)
    assert decision.decision == "Permit"
    assert _verify(central, decision.ticket).caller_uid == PILOT_UID
    assert line["pep"] == GLEXEC_PEP_DN


@slow
def test_host_certificate_not_on_ticket_pep_allow_gets_no_ticket(central: Central) -> None:
    decision, line = _ask(central, "pep")  # the site's PEP: on pep_allow, not ticket.pep_allow
    assert decision.decision == "Permit" and decision.uid == NOBODY
    assert decision.ticket is None
    assert line["pep"] == PEP_DN and line["decision"] == "Permit"
    reason = f"not issued: PEP {PEP_DN} is not on ticket.pep_allow and is not a proxy"
    assert line["ticket"] == reason
    assert line.get("ticket_nonce") is None


@slow
@pytest.mark.parametrize("which", ["member", "plain"])
def test_user_proxy_without_pilot_role_gets_no_ticket(central: Central, which: str) -> None:
    decision, line = _ask(central, getattr(central, which))
    assert decision.decision == "Permit" and decision.ticket is None
    assert line["pep"] == PILOT_DN
    assert line["ticket"] == (
        f"not issued: PEP {PILOT_DN} is not on ticket.pep_allow and has no FQAN on "
        "ticket.pep_fqans"
    )


@slow
def test_pilot_role_in_an_unverifiable_ac_gets_no_ticket(central: Central) -> None:
    """TLS does not look at the AC; the ticket rule does, with the server's vomsdir."""
    decision, line = _ask(central, central.forged)
    assert decision.decision == "Permit" and decision.ticket is None
    assert str(line["ticket"]).startswith("not issued: PEP proxy's VOMS attributes not verified")


@slow
@pytest.mark.parametrize("value", ["abc", "-1", "+1001", "01001", "4294967295", ""])
def test_stated_uid_not_an_integer_is_a_syntax_error(central: Central, value: str) -> None:
    extra = [("environment", ids.ATTR_CALLER_UID, value)]
    decision, line = _ask(central, central.pilot, caller_uid=None, extra=extra)
    assert decision.decision == "Indeterminate" and decision.ticket is None
    assert decision.status_code == ids.STATUS_SYNTAX_ERROR
    assert line["decision"] == "Indeterminate" and "caller-uid" in str(line["reason"])


@slow
def test_ticket_advertised_without_stated_uid_gets_permit_without_ticket(
    central: Central,
) -> None:
    decision, line = _ask(central, central.pilot, caller_uid=None)
    assert decision.decision == "Permit" and decision.uid == NOBODY
    assert decision.ticket is None
    assert line["ticket"] == "not issued: no stated caller uid (caller-uid attribute) over TLS"
    assert "stated_caller_uid" not in line


@slow
def test_stated_uid_without_host_gets_no_ticket(central: Central) -> None:
    decision, line = _ask(central, central.pilot, host=None)
    assert decision.decision == "Permit" and decision.ticket is None
    assert line["ticket"] == "not issued: no dns-host-name in the request to bind the ticket to"


@slow
def test_ticket_not_advertised_is_not_sent(central: Central) -> None:
    decision, line = _ask(central, central.pilot, oblig=ids.MAPPING_OBLIGATIONS)
    assert decision.decision == "Permit" and decision.ticket is None
    assert "ticket" not in line and line.get("ticket_nonce") is None
