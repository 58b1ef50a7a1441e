"""``scas-admin``: the site admin's tool over the site's own files and the running server.

In: the server's YAML (``--config``) and the files it names (ban lists, grid-mapfiles,
lcas.db, lcmaps.db, the gridmapdir, the audit log); the running server's pidfile.
Out: atomic edits, reload confirmations, explanations, lease management, reports
(text, or ``--json``). Exit codes: 0 ok, 1 refused or a problem found, 2 usage/system error.
May import: every package below it (``scas_server`` and what it may import).
"""
