"""The SCAS wire protocol, and the failover client that speaks it.

Protocol (shared with the server): SOAP 1.1/1.2 with SAML2-XACML2 messages, both
directions (:mod:`client.xacml`). In: a query's fields (or its bytes), a decision (or a
response's bytes). Out: request and response bytes, parsed
:class:`~client.xacml_request.AuthzRequest` and :class:`~client.xacml_response.Decision`
objects, one :class:`XacmlError` class per way a message is refused.

Failover client (PEP side): :mod:`client.query` builds a query from a payload credential,
:mod:`client.failover` asks SCAS replicas in turn (strategies, timeouts, a deadline, an
endpoint memory kept in :mod:`client.endpoint_memory`) over :mod:`client.transport`
(mutual TLS or the node-local Unix socket, kept-alive connections); :mod:`client.failures`
holds its exception classes; :mod:`client.cli` is ``scas-query``.

Imports: :mod:`safetext`, lxml and the standard library only. ``import client`` imports
nothing. The failover client's path is standard library only, and lean: the query is
written as text (:mod:`client.xacml_text`), the reply read with expat
(:mod:`client.xacml_expat`, :mod:`client.xacml_decision`), the HTTP exchange is
:mod:`client.http11`; ssl loads only for an https endpoint. glexec imports the client once
per payload, so lxml, http.client, dataclasses and typing never come along (the lxml
modules are the server's half; they re-export the client's pieces under their old names).
"""
