"""The SCAS service: flask under gunicorn, over mutual TLS and a node-local Unix socket.

In:  SOAP queries from PEPs (CEs, worker nodes, glexec), the server YAML, ``lcas.db`` and
     ``lcmaps.db``, signals (SIGHUP reloads).
Out: Permit / Deny / Indeterminate with obligations and glexec tickets, one audit line per
     decision, ``/health`` and ``/metrics``; ``scas-server``.
Imports: everything below it: :mod:`client`, :mod:`credentials`, :mod:`lcas`, :mod:`lcmaps`,
:mod:`leases`, :mod:`sitefiles`, :mod:`safetext`.
"""
