"""``workerpool bench``: measure workerpool against plain Celery on the same Redis.

``runner`` runs the figures in phases, ``harness`` owns every process the bench starts,
``baseline`` is the plain Celery app compared against, ``figures`` and ``scale`` measure, and
``report`` and ``png`` write the table, ``docs/benchmarks.md`` and the plot. Nothing here is
imported by the rest of workerpool.
"""
