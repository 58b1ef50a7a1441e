"""The reference multi-user pilot: pull a payload, fetch its owner's proxy, run it with glexec.

In:  a VO task queue, MyProxy, the pilot's own credential (``/<vo>/Role=pilot``), glexec.
Out: each payload run under its owner's account, its outputs and status reported back.
Modules: :mod:`pilot.cli` (the ``pilot`` command), :mod:`pilot.supervise` (the first process:
cleans up after the loop whatever kills it), :mod:`pilot.loop` (claim, fetch, run, report,
destroy), :mod:`pilot.proxy` (MyProxy and VOMS), :mod:`pilot.run` (one glexec call),
:mod:`pilot.outcome` (glexec's exit codes and status record), :mod:`pilot.queue` (the queue).
May import: :mod:`credentials`, :mod:`safetext` (glexec and MyProxy run as commands).
"""
