"""The start-up check of the private parts of Celery and kombu a worker relies on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import one_line_error
from kombu.transport import redis as kombu_redis

from workerpool.core.errors import Incompatible
from workerpool.worker.celery import internals


def test_the_installed_celery_and_kombu_have_every_part() -> None:
    internals.check()  # raises if one is missing
    assert kombu_redis.Channel._in_poll is False  # the idle value the queue gate waits for


@pytest.mark.parametrize("owner,name", internals.REQUIRED,
                         ids=[f"{o.__name__}.{n}" for o, n in internals.REQUIRED])
def test_a_renamed_part_refuses_the_worker_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                      owner: type, name: str) -> None:
    for klass in owner.__mro__:  # gone from the class and every base, as after a rename
        if name in vars(klass):
            monkeypatch.delattr(klass, name)
    with pytest.raises(Incompatible) as caught:
        internals.check()
    message = str(caught.value)
    assert f"{owner.__name__}.{name}" in message and "\n" not in message
    assert caught.value.exit_code == 2



def test_worker_start_refuses_with_one_line_when_kombu_lacks_a_part(tmp_path) -> None:
    """The real ``worker start`` against a kombu whose Redis channel lost ``_in_poll``: it
    stops before it connects anywhere, with one line naming the part, exit 2."""
    (tmp_path / "sitecustomize.py").write_text(
        "from kombu.transport import redis\ndel redis.Channel._in_poll\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env.update(PYTHONPATH=str(tmp_path), WORKERPOOL_HOME=str(tmp_path / "home"),
               WORKERPOOL_REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens: never reached
    done = subprocess.run([sys.executable, "-m", "workerpool", "worker", "start", "--pool", "P"],
                          env=env, capture_output=True, text=True, timeout=60)
    line = one_line_error(done, 2)
    assert "kombu.transport.redis.Channel._in_poll" in line
