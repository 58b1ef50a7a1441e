"""The LCAS plugins (entry points ``scas_stack.lcas_plugins``), named like C's
``lcas_<name>.mod``: userban, userallow, timeslots, voms and plugin_example.

In:  the plugin's argv from ``lcas.db``, then :class:`~lcas.plugin_api.Request`.
Out: :class:`~lcas.plugin_api.Verdict`. Imports: :mod:`lcas.plugin_api`, :mod:`sitefiles`.
"""
