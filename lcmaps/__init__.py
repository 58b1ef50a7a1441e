"""LCMAPS: the policy engine of ``lcmaps.db`` and its plugins: credential in, account out.

In:  ``lcmaps.db`` (read unchanged, as C LCMAPS 1.6 reads it), then per request the DN, the
     FQANs, the verified credential and the selected policies.
Out: a :class:`~lcmaps.evaluation.MappingResult` (uid, primary and secondary gids, user name,
     pool index), or a deny with its reason; a fault of a lease store or a plugin is raised
     as :class:`~lcmaps.evaluation.MappingUnavailable`, never turned into a deny.
Imports: :mod:`credentials`, :mod:`leases`, :mod:`sitefiles`, :mod:`safetext`. Importing this
package is cheap; submodules pull in what they need.
"""
