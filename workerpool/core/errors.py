"""One exception tree, grouped by who handles it; the CLI maps each group to an exit code."""

from __future__ import annotations


class WorkerPoolError(Exception):
    """Base of every error workerpool raises on purpose; its message is meant for a user."""

    exit_code = 1


class Refused(WorkerPoolError):
    """The request was refused before anything ran (exit code 2)."""

    exit_code = 2


class BadInput(Refused):
    """An argument, option or file is malformed."""


class UnknownPool(Refused):
    """A step or command names a pool that does not exist."""


class PoolConflict(Refused):
    """The pool change would break a pool rule (duplicate name, removing the default)."""


class NoWorker(Refused):
    """No worker can take the step (built-in worker disabled, no worker for the syntax)."""


class WorkerConflict(Refused):
    """A live worker already uses the requested name."""


class UnknownStep(Refused):
    """No step with that id is stored (never existed, or its record expired)."""


class Forbidden(Refused):
    """Redis refused the command to this login (an ACL user of a worker or a runner)."""


class Incompatible(Refused):
    """An installed dependency lacks a part workerpool relies on (a Celery or kombu version
    outside the supported range)."""


class Infrastructure(WorkerPoolError):
    """Something workerpool depends on is unavailable (exit code 3)."""

    exit_code = 3


class RedisUnavailable(Infrastructure):
    """Redis could not be reached or refused the connection."""


class StepWaitTimeout(WorkerPoolError):
    """A wait on a step ended before the step did; the step keeps going."""


class UnknownFeed(Refused):
    """A step or command names a package feed that does not exist."""


class StepSetupError(WorkerPoolError):
    """A step could not be prepared on its worker (its packages); the step fails (exit code 1)."""


class ArchiveError(StepSetupError):
    """An archive is corrupt, unsafe (an entry would escape its directory) or over its limits."""


class PackageError(StepSetupError):
    """A referenced package could not be found, downloaded, verified or extracted."""

    def __init__(self, package_id: str, version: str, feed: str, reason: str) -> None:
        reason = " ".join(reason.split())  # one line, whatever the cause's text held
        super().__init__(f"package {package_id} {version} from feed '{feed}': {reason}")
        self.package_id = package_id
        self.version = version
        self.feed = feed
        self.reason = reason


def one_line(text: object) -> str:
    """*text* with every run of whitespace (newlines included) made one space: for messages
    that must stay on one line."""
    return " ".join(str(text).split())
