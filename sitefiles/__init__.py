"""Site files that LCAS and LCMAPS both read, in the C tools' own formats.

In:  grid-mapfiles, groupmapfiles, ban lists (with C's glob rules) and plugin argv from
     ``lcas.db`` / ``lcmaps.db``.
Out: parsed entries and glob matches (:mod:`sitefiles.mapfile`, :mod:`sitefiles.cglob`), how
     the one-shot commands end (:mod:`sitefiles.oneshot`), and
     the one plugin loader and argument walker both chains use (:mod:`sitefiles.plugins`).
Imports: nothing of ours but :mod:`safetext`. Both :mod:`lcas` and :mod:`lcmaps` import this.
"""
