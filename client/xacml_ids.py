"""Every namespace, attribute id, obligation id and status code of the SCAS wire protocol.

One place, so the server, the client and the tests cannot drift apart. The ids are those of
the OSG/EGEE "authz-interop" XACML profile (SAML2 profile of XACML 2.0) as spoken by the
Globus/Nikhef C library, GUMS and Argus' SCAS-legacy PIP.
"""

from __future__ import annotations

# --- SOAP ---------------------------------------------------------------------------------
NS_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP_ENVELOPES = (NS_SOAP11, NS_SOAP12)
SOAP_ACTION = (
    "http://www.globus.org/security/XACMLAuthorization/XACMLAuthorizationPortType/AuthorizeRequest"
)
NS_WSDL_TARGET = "http://www.globus.org/security/XACMLAuthorization"

# --- SAML 2.0 and the SAML2 profile of XACML 2.0 --------------------------------------------
NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_XSD = "http://www.w3.org/2001/XMLSchema"
NS_CONTEXT = "urn:oasis:names:tc:xacml:2.0:context:schema:os"
NS_POLICY = "urn:oasis:names:tc:xacml:2.0:policy:schema:os"

# The query/statement namespaces occur in two generations. The v2 working-draft spelling is
# what the C library (and so every SCAS client) sends; the OS spelling is OpenSAML-era.
NS_XACML_SAMLP_V2 = "urn:oasis:names:tc:xacml:2.0:profile:saml2.0:v2:schema:protocol"
NS_XACML_SAML_V2 = "urn:oasis:names:tc:xacml:2.0:profile:saml2.0:v2:schema:assertion"
NS_XACML_SAMLP_OS = "urn:oasis:xacml:2.0:saml:protocol:schema:os"
NS_XACML_SAML_OS = "urn:oasis:xacml:2.0:saml:assertion:schema:os"
NS_XACML_SAML_OS_ALT = "urn:oasis:names:tc:xacml:2.0:saml:assertion:schema:os"
#: protocol namespace of the query -> assertion namespace used in the answer
QUERY_NAMESPACES = {
    NS_XACML_SAMLP_V2: NS_XACML_SAML_V2,
    NS_XACML_SAMLP_OS: NS_XACML_SAML_OS,
}
STATEMENT_NAMESPACES = (NS_XACML_SAML_V2, NS_XACML_SAML_OS, NS_XACML_SAML_OS_ALT)

#: prefixes used in what we emit: the C library's own, so our output looks like its server's
NSMAP = {
    "xsi": NS_XSI,
    "xsd": NS_XSD,
    "saml": NS_SAML,
    "samlp": NS_SAMLP,
    "XACMLcontext": NS_CONTEXT,
    "XACMLpolicy": NS_POLICY,
}

# --- data types ---------------------------------------------------------------------------
XS = "http://www.w3.org/2001/XMLSchema#"
DT_STRING = XS + "string"
DT_INTEGER = XS + "integer"
DT_BASE64 = XS + "base64Binary"
DT_DATETIME = XS + "dateTime"

# --- attribute ids ------------------------------------------------------------------------
AI = "http://authz-interop.org/xacml/"
SUBJECT_CATEGORY_ACCESS = "urn:oasis:names:tc:xacml:1.0:subject-category:access-subject"
ATTR_SUBJECT_DN = AI + "subject/subject-x509-id"
ATTR_SUBJECT_ISSUER = AI + "subject/subject-x509-issuer"
ATTR_VO = AI + "subject/vo"
ATTR_VOMS_SIGNING_SUBJECT = AI + "subject/voms-signing-subject"
ATTR_VOMS_SIGNING_ISSUER = AI + "subject/voms-signing-issuer"
ATTR_FQAN = AI + "subject/voms-fqan"
ATTR_PRIMARY_FQAN = AI + "subject/voms-primary-fqan"
ATTR_CERT_CHAIN = AI + "subject/cert-chain"
ATTR_RESOURCE_ID = "urn:oasis:names:tc:xacml:1.0:resource:resource-id"
ATTR_HOST = AI + "resource/dns-host-name"
ATTR_RESOURCE_DN = AI + "resource/resource-x509-id"
ATTR_RESOURCE_ISSUER = AI + "resource/resource-x509-issuer"
ATTR_ACTION_ID = "urn:oasis:names:tc:xacml:1.0:action:action-id"
ATTR_OBLIG_SUPPORTED = AI + "environment/pep-oblig-supported"
ATTR_PILOT_DN = AI + "environment/pilot-job/subject-x509-id"
#: the Globus library's typo, seen on the wire; accepted as a spelling of ATTR_PILOT_DN
ATTR_PILOT_DN_TYPO = AI + "environment/pilot-job/subject-x509_-id"
ATTR_PILOT_PRIMARY_FQAN = AI + "environment/pilot-job/voms-primary-fqan"
ATTR_CURRENT_DATETIME = "urn:oasis:names:tc:xacml:1.0:environment:current-dateTime"
#: Local extension (not in the authz-interop profile v1.1): the real uid of the process that
#: asks (glexec, running as the pilot), an xs:integer in the Environment. SCAS binds it into
#: a glexec ticket: on the Unix socket it must equal the kernel's SO_PEERCRED uid; over TLS it
#: is signed only for PEPs on the ticket allow-list (docs/ticket.md).
ATTR_CALLER_UID = AI + "attribute/x-scas-stack/caller-uid"
#: largest uid a caller-uid may state ((uid_t)-1 means "no change" to setresuid)
MAX_UID = 4294967294

RESOURCE_TYPE_PREFIX = AI + "resource/resource-type/"
ACTION_TYPE_PREFIX = AI + "action/action-type/"

# --- obligations --------------------------------------------------------------------------
OBLIG_UIDGID = AI + "obligation/uidgid"
OBLIG_SECONDARY_GIDS = AI + "obligation/secondary-gids"
OBLIG_USERNAME = AI + "obligation/username"
#: Local extension (not in the authz-interop profile v1.1): the Ed25519-signed glexec mapping
#: ticket of docs/ticket.md, one xs:string assignment. Sent only to a PEP that advertises it.
OBLIG_TICKET = AI + "obligation/x-scas-stack/glexec-ticket"
ATTR_POSIX_UID = AI + "attribute/posix-uid"
ATTR_POSIX_GID = AI + "attribute/posix-gid"
ATTR_USERNAME = AI + "attribute/username"
ATTR_TICKET = AI + "attribute/x-scas-stack/glexec-ticket"
#: what a glexec-style PEP advertises
MAPPING_OBLIGATIONS = (OBLIG_UIDGID, OBLIG_SECONDARY_GIDS, OBLIG_USERNAME)

# --- decisions and status codes -------------------------------------------------------------
PERMIT, DENY, INDETERMINATE, NOT_APPLICABLE = "Permit", "Deny", "Indeterminate", "NotApplicable"
DECISIONS = (PERMIT, DENY, INDETERMINATE, NOT_APPLICABLE)
STATUS_OK = "urn:oasis:names:tc:xacml:1.0:status:ok"
STATUS_MISSING_ATTRIBUTE = "urn:oasis:names:tc:xacml:1.0:status:missing-attribute"
STATUS_SYNTAX_ERROR = "urn:oasis:names:tc:xacml:1.0:status:syntax-error"
STATUS_PROCESSING_ERROR = "urn:oasis:names:tc:xacml:1.0:status:processing-error"
SAML_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
NAMEID_X509 = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
NAMEID_ENTITY = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
