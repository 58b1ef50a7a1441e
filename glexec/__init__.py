"""glexec: run a payload under its owner's account, via a small setuid helper.

In:  the payload's proxy (GLEXEC_CLIENT_CERT) and command, from a pilot job; glexec.conf.
Out: the payload's exit status, or the classic exit codes 201 (caller), 202 (system), 203
     (refused), 204 and 126, with an optional JSON status record.

Two halves (DESIGN.md section 6). The Python front (``glexec``, runs as the pilot, not
privileged) checks its inputs, asks SCAS for a signed mapping ticket and execs the helper:
:mod:`glexec.cli` (command line and flow), :mod:`glexec.config` (glexec.conf, parsed as the
helper parses it), :mod:`glexec.inputs` (proxy, environment and command checks),
:mod:`glexec.scas` (the query and the outcome -> exit code mapping), :mod:`glexec.handover`
(ticket and proxy on inherited descriptors, exec), :mod:`glexec.status` (exit codes, the status
record). ``setuid_helper.c`` is the trusted half: it verifies the ticket and proof of
possession itself and trusts nothing the front says.

Imports: :mod:`client` and :mod:`safetext` only, and the client (ssl, http.client, lxml) only
once a query is sent, so ``glexec -h`` and a refused call stay fast.
"""
