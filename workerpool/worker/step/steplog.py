"""The worker's side of a step log: mask, parse service messages, cap, and batch into Redis."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import redis

from workerpool.core import keys, scripts
from workerpool.core.connection import REDIS_RETRY_SECONDS
from workerpool.core.variables import Masker
from workerpool.worker.step.servicemessages import PREFIX, parse

log = logging.getLogger(__name__)
FLUSH_LINES = 200
FLUSH_SECONDS = 0.05
RETRY_SECONDS = 0.5  # between tries to write lines while Redis is away
REQUIRED = {"setVariable": "name", "createArtifact": "path"}  # each known message's must-have
MAX_OUTPUTS = 1000  # output variables per step
MAX_ARTIFACTS = 100  # artifacts per step (each up to artifacts.MAX_ARTIFACT_BYTES)


class StepLog:
    """Collects a running script's lines and writes them to the step's stream in batches."""

    def __init__(self, client: redis.Redis, step_id: str, masker: Masker, max_lines: int,
                 max_line_bytes: int) -> None:
        self.redis = client
        self.key = keys.step_log(step_id)
        self._step_key = keys.step(step_id)
        self._append = scripts.load(client, "log_append")
        self._writer = os.urandom(4).hex()  # this log's batches are numbered under its name
        self._batches = 0
        self.mask = masker
        self.max_lines = max_lines
        self.max_line_chars = max_line_bytes
        self.written = 0
        self.dropped = 0
        self.outputs: dict[str, str] = {}
        self.artifacts: dict[str, str] = {}  # name -> path relative to the working directory
        self._pending: list[dict[str, str]] = []
        self._first_pending = 0.0
        self._retry_at = 0.0  # after a failed write, the next one waits until then

    def line(self, stream: str, text: str) -> None:
        """One line of script output (without its newline)."""
        if text.startswith(PREFIX):
            self._service_message(text)
        else:
            self.append(stream, text)

    @property
    def full(self) -> bool:
        """Whether the cap is reached: later output lines are only counted."""
        return self.written >= self.max_lines

    def skip(self, count: int) -> None:
        """*count* output lines that were not stored (the log is full)."""
        self.dropped += count

    def append(self, stream: str, text: str) -> None:
        if self.full:
            self.dropped += 1
            return
        if len(text) > self.max_line_chars:
            text = text[: self.max_line_chars] + f" [line cut at {self.max_line_chars} chars]"
        self.written += 1
        if not self._pending:
            self._first_pending = time.monotonic()
        self._pending.append({"t": repr(time.time()), "s": stream, "x": self.mask(text)})
        if self.written == self.max_lines:
            self._pending.append({"t": repr(time.time()), "s": "system",
                                  "x": f"[log capped at {self.max_lines} lines; later lines "
                                       "are not stored]"})
        if len(self._pending) >= FLUSH_LINES and time.monotonic() >= self._retry_at:
            self.flush()

    def system(self, text: str) -> None:
        """A line from workerpool itself; never capped away."""
        if not self._pending:
            self._first_pending = time.monotonic()
        self._pending.append({"t": repr(time.time()), "s": "system", "x": self.mask(text)})

    def due_in(self) -> float | None:
        """Seconds until buffered lines must be written, or None when nothing is buffered."""
        if not self._pending:
            return None
        now = time.monotonic()
        return max(0.0, FLUSH_SECONDS - (now - self._first_pending), self._retry_at - now)

    def flush(self) -> bool:
        """Write the buffered lines; False (and they stay buffered) if Redis is away."""
        if not self._pending:
            return True
        batch = self._batches + 1
        try:
            # Numbered, so a batch whose reply was lost is not stored twice when sent again.
            self._append(keys=[self._step_key, self.key],
                         args=[self._writer, batch,
                               *(v for line in self._pending for v in (line["t"], line["s"],
                                                                      line["x"]))])
        except redis.RedisError as exc:  # keep the lines and try again a little later
            log.warning("could not write %d log lines yet: %s", len(self._pending), exc)
            # Not due again at once: the script's output loop would spin on it.
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return False
        self._batches = batch
        self._pending.clear()
        return True

    def last_lines(self) -> list[dict[str, str]]:
        """The lines not yet written, handed over to be stored with the step's end (in the same
        Redis call: ``StepStore.finish``); the log holds nothing more afterwards."""
        self._note_dropped()
        lines, self._pending = self._pending, []
        return lines

    def close(self) -> None:
        """Write the last lines, waiting out a Redis outage or network cut of up to
        ``REDIS_RETRY_SECONDS``: the step's end is recorded next, and its log must be whole by
        then."""
        self._note_dropped()
        deadline = time.monotonic() + REDIS_RETRY_SECONDS
        while not self.flush():
            if time.monotonic() > deadline:
                log.error("gave up writing %d log lines of %s", len(self._pending), self.key)
                return
            time.sleep(RETRY_SECONDS)

    def _note_dropped(self) -> None:
        """Say, once, how many output lines the cap kept out of the log."""
        if self.dropped:
            self.system(f"[{self.dropped} more lines were not stored]")
            self.dropped = 0

    def _service_message(self, text: str) -> None:
        """Act on a ``##workerpool[...]`` line; what cannot be acted on is noted in the log
        (capped like output, so a flood of them cannot grow it)."""
        message = parse(text)
        problem = None
        if message is None:
            problem = (f"ignored a malformed service message (expected "
                       f"##workerpool[kind name='value' ...]): {text[:200]}")
        elif message.kind not in REQUIRED:
            problem = (f"ignored unknown service message {message.kind!r} (known: "
                       f"{', '.join(REQUIRED)})")
        elif not message.attributes.get(REQUIRED[message.kind]):
            problem = f"ignored {message.kind} without a {REQUIRED[message.kind]}: {text[:200]}"
        elif message.kind == "setVariable":
            problem = self._set_output(message.attributes["name"],
                                       message.attributes.get("value", ""))
        else:
            problem = self._add_artifact(message.attributes["path"],
                                         message.attributes.get("name", ""))
        if problem is not None:
            self.append("system", problem)

    def _set_output(self, name: str, value: str) -> str | None:
        if name not in self.outputs and len(self.outputs) >= MAX_OUTPUTS:
            return f"ignored setVariable {name!r}: a step sets at most {MAX_OUTPUTS} output " \
                   "variables"
        self.outputs[name] = self.mask(value)
        return None

    def _add_artifact(self, path: str, name: str) -> str | None:
        name = name or Path(path).name
        if name not in self.artifacts and len(self.artifacts) >= MAX_ARTIFACTS:
            return f"ignored createArtifact {name!r}: a step publishes at most {MAX_ARTIFACTS} " \
                   "artifacts"
        self.artifacts[name] = path
        return None
