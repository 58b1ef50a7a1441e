"""LCAS: the allow/ban chain. Every plugin in ``lcas.db`` must allow, or the user is refused.

In:  ``lcas.db`` (read unchanged, as liblcas reads it), then one request per decision: the
     identity DN, the FQANs and the verified credential.
Out: a :class:`~lcas.plugin_api.Verdict` (allowed, or refused with a one-line reason and the
     plugin that refused); :class:`~lcas.db.LcasConfigError` (``file:line``) for a bad file.
Imports: :mod:`credentials`, :mod:`sitefiles`, :mod:`safetext`; never the LCMAPS engine.
"""
