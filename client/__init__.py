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
nothing; ``client.failover`` loads ssl, http.client and lxml on first use: glexec imports
the client once per payload, and flask, zeep, requests or http.server never come along.
"""
