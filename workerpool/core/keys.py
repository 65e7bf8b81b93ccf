"""Every Redis key workerpool uses, in one place.

Layout (``P`` is ``workerpool:``)::

    P pools                   hash   slug -> pool JSON {name, description, requires, health_check}
    P default-pool            string slug of the default pool
    P builtin:disabled        string present while the built-in worker is disabled
    P workers                 hash   worker name -> worker JSON {name, pool, instance, ...}
    P hb:<instance>           string heartbeat JSON {time, state, running, reason}, expiring
    P step:<id>               hash   step record: spec, state, pool, queue, worker, times
    P step:<id>:log           stream log entries {t, s, x} (time, stream, text) and one final {end}
    P step:<id>:artifacts     hash   artifact name -> JSON {name, path, size, sha256}
    P step:<id>:artifact:<n>  string the artifact's bytes
    P pending                 zset   step id -> lease deadline (steps in state Queued)
    P running                 zset   step id -> start time (steps in state Running; their leases)
    P reaper                  string held by the process reaping now (expires: one reap per period)
    P requeue-check:<run id>  string the check for messages lost in a restart ran in this Redis run
    P control:<instance>      pubsub cancel requests for the steps a worker instance runs
    P feeds                   hash   feed name -> feed JSON {type, uri} (``builtin`` is implicit)
    P builtin-packages        hash   "<id>/<version>" -> built-in package JSON {id, version, ext,
                                     size, sha256, chunks, pushed_at}
    P builtin-package:<id>/<version>
                              list   the built-in package's bytes in 1 MiB chunks, in order
    P package-sha:<feed>/<id>/<version>
                              string sha256 recorded at the package's first download anywhere
    (package ids and versions are case-insensitive, as in NuGet: they are lower-cased in keys)
    workerpool.pool.<slug>    list   the pool's Celery queue (kombu's Redis layout)
    workerpool.builtin        list   the built-in worker's Celery queue
    P targets                 hash   target slug -> JSON {name, environment, roles}
    workerpool.target.<slug>  list   a deployment target's own agent queue
    P deployments:queue       list   deployment ids submitted and not yet taken by a server
    P deployments:active      set    deployment ids a server is running (resumed after a restart)
    P deployments:all         zset   deployment id -> submit time
    P deployment:<id>         hash   deployment record: process JSON, environment, state, steps
    P deployment:<id>:done    list   ids of its runs as they finish (finish pushes them)
    P server:hb               string the orchestrator's heartbeat, expiring
    unacked_index             zset   kombu's: delivery tag -> delivery time of unacked messages
                                     (a worker acks a step's message once its script starts)
"""

from __future__ import annotations

PREFIX = "workerpool:"
POOLS = PREFIX + "pools"
DEFAULT_POOL = PREFIX + "default-pool"
BUILTIN_DISABLED = PREFIX + "builtin:disabled"
WORKERS = PREFIX + "workers"
PENDING = PREFIX + "pending"
RUNNING = PREFIX + "running"
REAPER_LOCK = PREFIX + "reaper"

TARGETS = PREFIX + "targets"
DEPLOYMENTS_QUEUE = PREFIX + "deployments:queue"
DEPLOYMENTS_ACTIVE = PREFIX + "deployments:active"
DEPLOYMENTS_ALL = PREFIX + "deployments:all"
SERVER_HEARTBEAT = PREFIX + "server:hb"
TARGET_POOL_PREFIX = "target:"
TARGET_QUEUE_PREFIX = "workerpool.target."

BUILTIN_QUEUE = "workerpool.builtin"
BUILTIN_POOL = "builtin"
POOL_QUEUE_PREFIX = "workerpool.pool."
# kombu's, read by tests: it redelivers a message whose time here is older than the visibility
# timeout, which only a message fetched by a worker that died before the script started reaches.
KOMBU_UNACKED_INDEX = "unacked_index"


def pool_queue(slug: str) -> str:
    return POOL_QUEUE_PREFIX + slug


def target_queue(slug: str) -> str:
    return TARGET_QUEUE_PREFIX + slug


def deployment(deployment_id: str) -> str:
    return f"{PREFIX}deployment:{deployment_id}"


def deployment_done(deployment_id: str) -> str:
    return f"{PREFIX}deployment:{deployment_id}:done"


HEARTBEAT_PREFIX = PREFIX + "hb:"
STEP_PREFIX = PREFIX + "step:"


def heartbeat(instance: str) -> str:
    return HEARTBEAT_PREFIX + instance


def step(step_id: str) -> str:
    return STEP_PREFIX + step_id


def step_log(step_id: str) -> str:
    return f"{PREFIX}step:{step_id}:log"


def step_artifacts(step_id: str) -> str:
    return f"{PREFIX}step:{step_id}:artifacts"


def step_artifact(step_id: str, name: str) -> str:
    return f"{PREFIX}step:{step_id}:artifact:{name}"


def requeue_check(run_id: str) -> str:
    """Set once per Redis run by the reaper that checked queued steps for lost messages."""
    return f"{PREFIX}requeue-check:{run_id}"


def control(instance: str) -> str:
    return f"{PREFIX}control:{instance}"


FEEDS = PREFIX + "feeds"
BUILTIN_PACKAGES = PREFIX + "builtin-packages"


def package_field(package_id: str, version: str) -> str:
    """The field of a built-in package in BUILTIN_PACKAGES."""
    return f"{package_id}/{version}".lower()


def builtin_package_data(package_id: str, version: str) -> str:
    return f"{PREFIX}builtin-package:{package_field(package_id, version)}"


def package_sha(feed: str, package_id: str, version: str) -> str:
    return f"{PREFIX}package-sha:{feed}/{package_field(package_id, version)}"
