"""The core layer: what every other layer shares.

Settings, errors, the Redis key layout and its Lua scripts, connections, sealing, and the
model and state machine of pools, workers and steps (routing, enqueue, claim, finish, cancel,
requeue, reap). It imports no other layer of workerpool, and never Celery or kombu.
"""
