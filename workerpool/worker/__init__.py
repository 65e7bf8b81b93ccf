"""The worker layer: a process that registers in a pool, leases steps from its queue and runs
their scripts.

``runtime`` holds a worker's state and threads; ``step/`` prepares and runs one step;
``isolation/`` keeps a step's processes contained; ``packages/`` fetches and places referenced
packages; ``celery/`` is the one place that touches Celery and kombu.
"""
