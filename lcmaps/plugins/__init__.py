"""The LCMAPS plugins (entry points ``scas_stack.lcmaps_plugins``), named like C's
``lcmaps_<name>.mod``: accounts, pool accounts and groups, bans, proxy checks and limits.

In:  the plugin's argv from ``lcmaps.db``, then a :class:`~lcmaps.plugin_api.RunContext`.
Out: success or failure, and uids/gids/pool index in the run's credential data.
Imports: :mod:`lcmaps.plugin_api`, :mod:`credentials`, :mod:`sitefiles`; leases only through
the :class:`~leases.store.LeaseStore` interface (:func:`leases.store_for`).
"""
