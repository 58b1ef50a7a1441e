"""The thin job-submission path: JDL in, authorization at the CE, the job run in Slurm.

In:  JDL files and the user's VOMS proxy (``wms``); submissions over mutual TLS (the CE).
Out: jobs queued with ``glexec sbatch`` under the mapped account, their states and output.
May import: :mod:`client`, :mod:`credentials`, :mod:`safetext`.
"""
