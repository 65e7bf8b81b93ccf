"""The client layer: the Python API callers use to route, enqueue and follow steps, and to
submit deployments. It imports the core and the spec, never worker or server code, and never
Celery or kombu."""

from workerpool.client.client import Client, StepHandle

__all__ = ["Client", "StepHandle"]
