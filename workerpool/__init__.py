"""workerpool: worker pools for script steps on Celery and Redis."""

from workerpool.client import Client, StepHandle
from workerpool.core.errors import WorkerPoolError
from workerpool.core.steps import ScriptStep, StepResult

__all__ = ["Client", "ScriptStep", "StepHandle", "StepResult", "WorkerPoolError"]
__version__ = "0.1.0"
