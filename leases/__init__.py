"""Leases: which pool account (or pool group) a credential holds.

In:  a pool prefix and a lease string (DN, DN plus group names, or an FQAN).
Out: a :class:`~leases.store.Lease` (the account and the lease name), or one
     :class:`~leases.store.GridmapDirError` subclass per kind of failure, each marked as a
     policy outcome (``denial``) or a store fault (``unavailable``).
Imports: nothing of ours but :mod:`safetext`. The LCMAPS pool plugins program against
:class:`~leases.store.LeaseStore`; :func:`leases.store_for` gives the C-compatible gridmapdir.
"""
