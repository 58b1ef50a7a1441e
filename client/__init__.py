"""The SCAS wire protocol: SOAP 1.1/1.2 with SAML2-XACML2 messages, both directions.

In:  a query's fields (or its bytes), a decision (or a response's bytes).
Out: request and response bytes, parsed :class:`~client.xacml_request.AuthzRequest` and
     :class:`~client.xacml_response.Decision` objects, one :class:`XacmlError` class per way
     a message is refused. The server uses the same modules, so both sides agree.
Imports: :mod:`safetext` and lxml only. ``import client`` stays lean (no flask, zeep,
requests or http.server): glexec imports it once per payload.
"""
