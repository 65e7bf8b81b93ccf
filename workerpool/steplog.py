"""The worker's side of a step log: mask, parse service messages, cap, and batch into Redis."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from workerpool import keys
from workerpool.servicemessages import PREFIX, parse
from workerpool.variables import Masker

log = logging.getLogger(__name__)
FLUSH_LINES = 200
FLUSH_SECONDS = 0.05


class StepLog:
    """Collects a running script's lines and writes them to the step's stream in batches."""

    def __init__(self, client: redis.Redis, step_id: str, masker: Masker, max_lines: int,
                 max_line_bytes: int) -> None:
        self.redis = client
        self.key = keys.step_log(step_id)
        self.mask = masker
        self.max_lines = max_lines
        self.max_line_chars = max_line_bytes
        self.written = 0
        self.dropped = 0
        self.outputs: dict[str, str] = {}
        self.artifacts: dict[str, str] = {}  # name -> path relative to the working directory
        self._pending: list[dict[str, str]] = []
        self._first_pending = 0.0

    def line(self, stream: str, text: str) -> None:
        """One line of script output (without its newline)."""
        if text.startswith(PREFIX) and self._service_message(text):
            return
        self.append(stream, text)

    def append(self, stream: str, text: str) -> None:
        if len(text) > self.max_line_chars:
            text = text[: self.max_line_chars] + f" [line cut at {self.max_line_chars} chars]"
        if self.written >= self.max_lines:
            self.dropped += 1
            return
        self.written += 1
        if not self._pending:
            self._first_pending = time.monotonic()
        self._pending.append({"t": repr(time.time()), "s": stream, "x": self.mask(text)})
        if self.written == self.max_lines:
            self._pending.append({"t": repr(time.time()), "s": "system",
                                  "x": f"[log capped at {self.max_lines} lines; later lines "
                                       "are not stored]"})
        if len(self._pending) >= FLUSH_LINES:
            self.flush()

    def system(self, text: str) -> None:
        """A line from workerpool itself; never capped away."""
        self._pending.append({"t": repr(time.time()), "s": "system", "x": self.mask(text)})

    def due_in(self) -> float | None:
        """Seconds until buffered lines must be written, or None when nothing is buffered."""
        if not self._pending:
            return None
        return max(0.0, FLUSH_SECONDS - (time.monotonic() - self._first_pending))

    def flush(self) -> None:
        if not self._pending:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for fields in self._pending:
                pipe.xadd(self.key, fields)  # type: ignore[arg-type]
            pipe.execute()
        except redis.RedisError as exc:  # keep the lines and try again on the next flush
            log.warning("could not write %d log lines yet: %s", len(self._pending), exc)
            return
        self._pending.clear()

    def close(self) -> None:
        if self.dropped:
            self.system(f"[{self.dropped} more lines were not stored]")
        self.flush()

    def _service_message(self, text: str) -> bool:
        message = parse(text)
        if message is None:
            self.system(f"ignored a malformed service message: {text[:200]}")
            return True
        if message.kind == "setVariable" and "name" in message.attributes:
            value = message.attributes.get("value", "")
            self.outputs[message.attributes["name"]] = self.mask(value)
            return True
        if message.kind == "createArtifact" and "path" in message.attributes:
            path = message.attributes["path"]
            self.artifacts[message.attributes.get("name") or Path(path).name] = path
            return True
        self.system(f"ignored unknown service message {message.kind!r}")
        return True
