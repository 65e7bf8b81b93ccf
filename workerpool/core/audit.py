"""The audit trail: who did what to what, from where, and how it ended.

One Redis stream, ``workerpool:audit`` (``AUDIT``), trimmed to about ``MAX_ENTRIES``; each entry
holds {time, who, role, action, target, outcome, detail, source}, source being the client's
address or ``cli``. Values are stored as given: whoever shows them escapes them (HTML in the
console, ``printable`` on a terminal). ``workerpool audit`` lists them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import cast

import redis

AUDIT = "workerpool:audit"
MAX_ENTRIES = 10000
FIELDS = ("who", "role", "action", "target", "outcome", "detail", "source")


@dataclass(frozen=True)
class AuditEntry:
    id: str  # the stream entry's id: its order, and a cursor for ``read(before=...)``
    time: float
    who: str
    role: str
    action: str
    target: str
    outcome: str
    detail: str
    source: str


def record(client: redis.Redis, who: str, role: str, action: str, target: str,
           outcome: str = "ok", detail: str = "", source: str = "") -> str:
    """Append one entry to the trail; its id."""
    fields = {"time": repr(time.time()), "who": who, "role": role, "action": action,
              "target": target, "outcome": outcome, "detail": detail, "source": source}
    entry_id = client.xadd(AUDIT, fields,  # type: ignore[arg-type]
                           maxlen=MAX_ENTRIES, approximate=True)
    return _text(entry_id)


def read(client: redis.Redis, limit: int = 100, before: str | None = None) -> list[AuditEntry]:
    """Up to *limit* entries, newest first; only those older than the id *before* if given
    (the next page after an entry)."""
    if limit <= 0:
        return []
    newest = f"({before}" if before else "+"
    found = cast(list[tuple[object, dict[object, object]]],
                 client.xrevrange(AUDIT, max=newest, min="-", count=limit))
    return [_entry(entry_id, fields) for entry_id, fields in found]


def to_json(entry: AuditEntry) -> dict[str, object]:
    return asdict(entry)


def _entry(entry_id: object, fields: dict[object, object]) -> AuditEntry:
    """An entry from the stream's fields; a field that is missing reads as empty."""
    values = {_text(k): _text(v) for k, v in fields.items()}
    try:
        when = float(values.get("time", ""))
    except ValueError:
        when = 0.0
    return AuditEntry(_text(entry_id), when, *(values.get(name, "") for name in FIELDS))


def _text(value: object) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
