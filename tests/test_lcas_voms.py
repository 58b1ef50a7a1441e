"""voms: simple and GACL auth files, -use_user_dn, hardened XML, real VOMS proxies."""

from __future__ import annotations

from pathlib import Path

import pytest

from credentials.credential import load_proxy_file
from lcas.plugin_api import LcasUnavailable, PluginInitError, Request
from lcas.plugins.voms import VomsAuth
from testkit.pki import TestPKI, User

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
DTEAM = "/dteam/Role=NULL/Capability=NULL"
PROD = "/dteam/production/Role=NULL/Capability=NULL"
ADMIN = "/dteam/Role=admin/Capability=NULL"
ATLAS = "/atlas/Role=NULL/Capability=NULL"


def voms(tmp: Path, text: str | bytes, *args: str, name: str = "auth") -> VomsAuth:
    path = tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return VomsAuth(("lcas_voms.mod", "-authfile", str(path), *args))


def ok(plugin: VomsAuth, *fqans: str, dn: str = ALICE) -> bool:
    return plugin.authorize(Request(dn, fqans)).allowed


# --- simple format -----------------------------------------------------------


def test_voms_simple_allows_listed_fqan(tmp_path: Path) -> None:
    plugin = voms(tmp_path, f'# VO members\n"{DTEAM}"\n', "-authformat", "simple")
    assert ok(plugin, DTEAM)
    assert ok(plugin, ATLAS, DTEAM)
    verdict = plugin.authorize(Request(ALICE, (ATLAS,)))
    assert not verdict.allowed and "no FQAN is authorised" in verdict.reason


def test_voms_simple_wildcards_and_no_normalisation(tmp_path: Path) -> None:
    plugin = voms(tmp_path, '"/dteam/*"\n')
    assert ok(plugin, DTEAM)
    assert ok(plugin, PROD)
    assert not ok(plugin, "/dteam")  # no FQAN normalisation, as in C
    assert not ok(plugin, "/DTEAM/Role=NULL/Capability=NULL")


def test_voms_simple_no_fqans_refuses(tmp_path: Path) -> None:
    verdict = voms(tmp_path, '"/dteam/*"\n').authorize(Request(ALICE))
    assert not verdict.allowed and "no FQANs" in verdict.reason


def test_voms_simple_dn_only_with_use_user_dn(tmp_path: Path) -> None:
    text = f'"{ALICE}"\n'
    assert not ok(voms(tmp_path, text))
    assert ok(voms(tmp_path, text, "-use_user_dn"))
    verdict = voms(tmp_path, text, "-use_user_dn").authorize(Request("/CN=Other"))
    assert "neither the DN nor any FQAN" in verdict.reason


def test_voms_simple_crlf_comments_mappings_ignored(tmp_path: Path) -> None:
    plugin = voms(tmp_path, f'# x\r\n\r\n"{ADMIN}" .dteam # admins\r\n{ATLAS}\r\n'.encode())
    assert ok(plugin, ADMIN)
    assert ok(plugin, ATLAS)
    assert not ok(plugin, DTEAM)


def test_voms_simple_broken_file_refuses_init(tmp_path: Path) -> None:
    with pytest.raises(PluginInitError, match=r"auth:2: unbalanced quote"):
        voms(tmp_path, f'"{DTEAM}"\n"/atlas\n')


# --- GACL ---------------------------------------------------------------------

GACL = """<?xml version="1.0"?>
<gacl version="0.0.1">
  <!-- production managers -->
  <entry>
    <voms><vo>dteam</vo><group>/dteam/production</group></voms>
    <allow><exec/></allow>
  </entry>
  <entry>
    <voms><group>atlas</group><role>NULL</role></voms>
    <allow><read/><write/></allow>
    <deny><admin/></deny>
  </entry>
  <entry>
    <voms><vo>dteam</vo><role>admin</role><capability>NULL</capability></voms>
    <allow><exec/></allow>
  </entry>
  <entry>
    <voms><fqan>/cms/*</fqan></voms>
    <allow><list/></allow>
  </entry>
  <entry>
    <person><dn>/DC=org/DC=example/O=Users/CN=Alice Smith</dn></person>
    <allow><exec/></allow>
  </entry>
</gacl>
"""


def test_voms_gacl_group_role_capability(tmp_path: Path) -> None:
    plugin = voms(tmp_path, GACL, "-authformat", "gacl")
    assert ok(plugin, PROD)
    assert not ok(plugin, DTEAM)  # group /dteam is not /dteam/production
    assert ok(plugin, ADMIN)
    assert ok(plugin, ATLAS)  # group without slash, role NULL; read/write grant
    assert not ok(plugin, "/atlas/Role=pilot/Capability=NULL")


def test_voms_gacl_list_permission_does_not_grant(tmp_path: Path) -> None:
    assert not ok(voms(tmp_path, GACL), "/cms/Role=NULL/Capability=NULL")


def test_voms_gacl_person_needs_use_user_dn(tmp_path: Path) -> None:
    assert not ok(voms(tmp_path, GACL))
    assert ok(voms(tmp_path, GACL, "-use_user_dn"))
    assert not ok(voms(tmp_path, GACL, "-use_user_dn"), dn="/CN=Else")


def test_voms_gacl_deny_overrides_allow(tmp_path: Path) -> None:
    text = """<gacl>
      <entry><voms><vo>dteam</vo></voms><allow><exec/></allow></entry>
      <entry><voms><role>banned</role></voms><deny><exec/></deny></entry>
    </gacl>"""
    plugin = voms(tmp_path, text)
    assert ok(plugin, DTEAM)
    assert not ok(plugin, DTEAM, "/dteam/Role=banned/Capability=NULL")


def test_voms_gacl_all_fields_must_match_one_fqan(tmp_path: Path) -> None:
    text = """<gacl><entry>
      <voms><group>/dteam/production</group><role>admin</role></voms>
      <allow><exec/></allow></entry></gacl>"""
    plugin = voms(tmp_path, text)
    assert not ok(plugin, PROD, ADMIN)  # role and group on different FQANs
    assert ok(plugin, "/dteam/production/Role=admin/Capability=NULL")


def test_voms_gacl_shipped_example_needs_server_dn(tmp_path: Path) -> None:
    text = Path("/etc/lcas/lcas_voms.gacl.in")
    if not text.exists():
        pytest.skip("/etc/lcas/lcas_voms.gacl.in not installed (liblcas0 examples)")
    plugin = voms(tmp_path, text.read_bytes())
    # <voms-cred> names the VOMS server: without a verified AC it cannot match
    assert not ok(plugin, "/EGEE/Role=NULL/Capability=NULL")


def test_voms_gacl_format_detected_from_content(tmp_path: Path) -> None:
    plugin = voms(tmp_path, "\ufeff\n" + GACL.split("\n", 1)[1])
    assert ok(plugin, ADMIN)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<!DOCTYPE gacl [<!ENTITY x "y">]><gacl/>', "DOCTYPE is not allowed"),
        ('<!DOCTYPE gacl SYSTEM "http://127.0.0.1:9/x.dtd"><gacl/>', "DOCTYPE is not allowed"),
        ("<gacl><entry>", "not well-formed"),
        ("<acl/>", "root element is <acl>"),
        ("<gacl><entry><allow><exec/></allow></entry></gacl>", "without a credential"),
    ],
)
def test_voms_gacl_refused_files(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(PluginInitError, match=reason):
        voms(tmp_path, text, "-authformat", "gacl")


def test_voms_gacl_billion_laughs_refused(tmp_path: Path) -> None:
    lol = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
           '<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><gacl><entry><voms><vo>&lol2;</vo>'
           "</voms><allow><exec/></allow></entry></gacl>")
    with pytest.raises(PluginInitError, match="DOCTYPE is not allowed"):
        voms(tmp_path, lol)


# --- options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((), "-authfile is required"),
        (("-authfile",), "-authfile needs to be followed by a value"),
        (("-authfile", "/nonexistent/x"), "No such file"),
        (("-authformat", "xml"), "-authformat takes simple or gacl"),
        (("-bogus",), "unknown argument '-bogus'"),
    ],
)
def test_voms_bad_options(args: tuple[str, ...], reason: str) -> None:
    with pytest.raises(PluginInitError, match=reason):
        VomsAuth(("lcas_voms.mod", *args))


def test_voms_auth_file_removed_is_unavailable(tmp_path: Path) -> None:
    plugin = voms(tmp_path, f'"{DTEAM}"\n')
    (tmp_path / "auth").unlink()
    with pytest.raises(LcasUnavailable, match=r"cannot read .*auth: No such file"):
        plugin.authorize(Request(ALICE, (DTEAM,)))


@pytest.mark.parametrize(
    ("text", "reason"),
    [('"/dteam/*"\n"/atlas\n', r"auth:2: unbalanced quote"),
     ("<gacl><entry>", "not well-formed")],
)
def test_voms_auth_file_broken_later_is_unavailable(tmp_path: Path, text: str,
                                                    reason: str) -> None:
    plugin = voms(tmp_path, f'"{DTEAM}"\n')
    (tmp_path / "auth").write_text(text)
    with pytest.raises(LcasUnavailable, match=reason):
        plugin.authorize(Request(ALICE, (ATLAS,)))


def test_voms_legacy_gacl_use_voms_dn_is_accepted(tmp_path: Path) -> None:
    plugin = voms(tmp_path, GACL, "-gacl_use_voms_dn", "always", "-vomsdir", "/x",
                  "-certdir", "/y")
    assert ok(plugin, ADMIN)


# --- with a real verified credential -------------------------------------------------


def test_voms_verifies_an_unverified_proxy(tmp_path: Path, pki: TestPKI,
                                           users: dict[str, User]) -> None:
    proxy = pki.proxy(users["alice"], fqans=(PROD,), vo="dteam")
    cred = load_proxy_file(proxy)
    plugin = voms(tmp_path, '"/dteam/production/*"\n', "-certdir", pki.certdir,
                  "-vomsdir", pki.vomsdir)
    assert plugin.authorize(Request(ALICE, (), cred)).allowed
    other = voms(tmp_path, '"/dteam/production/*"\n', "-certdir", str(tmp_path),
                 "-vomsdir", pki.vomsdir, name="auth2")
    verdict = other.authorize(Request(ALICE, (), cred))
    assert not verdict.allowed and verdict.reason.startswith("credential refused:")


def test_voms_gacl_server_dn_matches_verified_ac(tmp_path: Path, pki: TestPKI,
                                                 users: dict[str, User]) -> None:
    from credentials.credential import TrustStore, verify_credential

    proxy = pki.proxy(users["alice"], fqans=(DTEAM,), vo="dteam")
    cred = verify_credential(load_proxy_file(proxy), TrustStore(pki.certdir, pki.vomsdir))
    text = f"""<gacl><entry><voms-cred><voms>{pki.voms_dn}</voms><vo>dteam</vo>
      <group>/dteam</group></voms-cred><allow><read/></allow></entry></gacl>"""
    plugin = voms(tmp_path, text)
    assert plugin.authorize(Request(ALICE, cred.fqans, cred)).allowed
    assert not plugin.authorize(Request(ALICE, cred.fqans)).allowed  # no AC issuer known
    wrong = voms(tmp_path, text.replace(pki.voms_dn, "/CN=other"), name="auth2")
    assert not wrong.authorize(Request(ALICE, cred.fqans, cred)).allowed
