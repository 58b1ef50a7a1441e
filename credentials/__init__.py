"""Credentials: the first stage. Is this X.509/VOMS credential genuine, and whose is it?

In:  PEM bytes (a certificate or proxy chain), a CA directory, a vomsdir, ``now``.
Out: a verified :class:`~credentials.credential.Credential` (identity DN in OpenSSL one-line
     form, proxy type, FQANs from verified VOMS ACs) or one
     :class:`~credentials.errors.CredentialError` subclass per kind of failure.
Imports: nothing of ours but :mod:`safetext`. pyOpenSSL is used here and nowhere else.
"""
