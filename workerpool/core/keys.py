"""Every Redis key workerpool uses, in one place.

Keys are global (read by every component, written by admins) or a pool's own, under the pool's
space ``P pool:{POOL}:``, where POOL is a pool's slug, ``builtin`` (the built-in worker) or
``target:<slug>`` (a target's agent): a worker is given credentials for its pool's space only
(``core/credentials.py``). A step's id starts with its pool (``database-worker-pool~3f2a...``),
so a step's keys follow from its id alone.

Global (``P`` is ``workerpool:``)::

    P pools                   hash   slug -> pool JSON {name, description, requires, health_check}
    P default-pool            string slug of the default pool
    P builtin:disabled        string present while the built-in worker is disabled
    P pool-keys               hash   POOL -> JSON [{generation, public}]: the public keys steps
                                     of POOL are sealed to, one per generation, the highest
                                     newest (``core/sealing.py``)
    P feeds                   hash   feed name -> feed JSON {type, uri} (``builtin`` is implicit)
    P builtin-packages        hash   "<id>/<version>" -> built-in package JSON {id, version, ext,
                                     size, sha256, chunks, pushed_at}
    P builtin-package:<id>/<version>
                              list   the built-in package's bytes in 1 MiB chunks, in order
    (package ids and versions are case-insensitive, as in NuGet: they are lower-cased in keys)
    P targets                 hash   target slug -> JSON {name, environment, roles}
    P deployments:queue       list   deployment ids submitted and not yet taken by a server
    P deployments:active      set    deployment ids a server is running (resumed after a restart)
    P deployments:all         zset   deployment id -> submit time
    P deployment:<id>         hash   deployment record: process JSON, environment, state, steps
    P server:hb               string the orchestrator's heartbeat, expiring
    P server:lease            string the leading server's node and fencing token, expiring
    P server:fence            string the newest fencing token (INCR at each takeover)
    P dead:<POOL>             list   the pool's dead letters, newest first: JSON {tag, queue,
                                     reason, worker, at, message}, messages that crashed
                                     Celery's consumer twice (``core/deadletters.py``); the
                                     one key of a pool outside its space, written by its
                                     workers, read and dropped by admins
    P audit                   stream who did what to what, from where and how it ended
                                     (``core/audit.py``): the console's actions and logins
    P console:cookie-secret   string the key that signs the console's session cookies
                                     (``console/service.py``); admins' logins alone reach it
    P console:login-failures:<sha256 of an address>
                              string failed console logins from that address, expiring at
                                     the window's end (``console/accounts.py``)
    workerpool.pool.<slug>    list   the pool's Celery queue (kombu's Redis layout): its
                                     normal-priority steps, with <queue>:high and <queue>:low
                                     beside it (``priority_list``) for the other priorities;
                                     so for the built-in and target queues below
    workerpool.builtin        list   the built-in worker's Celery queue
    workerpool.target.<slug>  list   a deployment target's own agent queue
    _kombu.binding.<queue>    set    kombu's binding of a queue to its exchange

A pool's own (``S`` is ``workerpool:pool:{POOL}:``)::

    S workers                 hash   worker name -> worker JSON {name, pool, instance, ...}
    S hb:<instance>           string heartbeat JSON {time, state, running, reason}, expiring
    S live                    zset   worker instance -> when its last heartbeat expires (ms,
                                     Redis's clock): live while not past (``lua/beat.lua``;
                                     pruned by deregister and the reaper's ``lost.lua``)
    S states                  hash   worker instance -> the state its last heartbeat gave
    S step:<id>               hash   step record: spec, state, pool, queue, worker, times
                                     (``missing_since``: a reaper found its message gone)
    S step:<id>:log           stream log entries {t, s, x} (time, stream, text) and one final {end}
    S step:<id>:artifacts     hash   artifact name -> JSON {name, path, size, sha256}
    S step:<id>:artifact:<n>  string the artifact's bytes
    S pending                 zset   step id -> lease deadline (steps in state Queued)
    S running                 zset   step id -> start time (steps in state Running; their leases)
    S recent                  zset   step id -> queued time: the pool's newest RECENT_STEPS
                                     steps whatever their state, kept by ``lua/enqueue.lua``
                                     (``core/recent.py``; an id whose record expired is dropped
                                     when read)
    S reaper                  string held by the process reaping the pool now (one per period)
    S requeue-check:<run id>  string the check for messages lost in a restart ran in this Redis run
    S control:<instance>      pubsub cancel requests for the steps a worker instance runs
    S control:pool            pubsub "pause", "resume": workers read their pool's record again
    S done:<deployment id>    list   ids of the deployment's runs in this pool as they finish
    S package-sha:<feed>/<id>/<version>
                              string sha256 recorded at the package's first download in the pool
    S dropped                 string how many malformed messages the pool's workers dropped
    S ended                   hash   terminal state -> steps of the pool that ended in it, ever
                                     (``finish.lua``; ``core/tallies.py``; never expiring)
    S durations               hash   the running time of the pool's ended steps: "le:<bound>"
                                     -> steps whose time fell in that bucket (not cumulative;
                                     ``tallies.DURATION_BUCKETS``), "sum" (seconds), "count"
    S crashes                 hash   delivery tag -> times the message crashed Celery's
                                     consumer (the second crash dead-letters it), expiring
    S kombu:unacked, S kombu:unacked_index, S kombu:unacked_mutex
                                     kombu's unacknowledged messages of the pool's workers:
                                     delivery tag -> message, and -> delivery time (a worker acks
                                     a step's message once its script starts)
"""

from __future__ import annotations

PREFIX = "workerpool:"
POOLS = PREFIX + "pools"
DEFAULT_POOL = PREFIX + "default-pool"
BUILTIN_DISABLED = PREFIX + "builtin:disabled"
TARGETS = PREFIX + "targets"
DEPLOYMENTS_QUEUE = PREFIX + "deployments:queue"
DEPLOYMENTS_ACTIVE = PREFIX + "deployments:active"
DEPLOYMENTS_ALL = PREFIX + "deployments:all"
SERVER_HEARTBEAT = PREFIX + "server:hb"
SERVER_LEASE = PREFIX + "server:lease"
SERVER_FENCE = PREFIX + "server:fence"
POOL_KEYS = PREFIX + "pool-keys"
TARGET_POOL_PREFIX = "target:"
TARGET_QUEUE_PREFIX = "workerpool.target."

BUILTIN_QUEUE = "workerpool.builtin"
BUILTIN_POOL = "builtin"
POOL_QUEUE_PREFIX = "workerpool.pool."
STEP_ID_SEPARATOR = "~"  # a step's id is <pool>~<its own part>
SPACE_PREFIX = PREFIX + "pool:{"


def pool_queue(slug: str) -> str:
    return POOL_QUEUE_PREFIX + slug


def target_queue(slug: str) -> str:
    return TARGET_QUEUE_PREFIX + slug


def queue_of(pool: str) -> str:
    """The Celery queue of *pool* (a pool's slug, ``builtin`` or ``target:<slug>``)."""
    if pool == BUILTIN_POOL:
        return BUILTIN_QUEUE
    if pool.startswith(TARGET_POOL_PREFIX):
        return target_queue(pool.removeprefix(TARGET_POOL_PREFIX))
    return pool_queue(pool)


# A step's priority, and kombu's number for it: the worker's BRPOP asks its queue's lists in
# the order of these numbers (kombu's ``priority_steps``), so it takes the oldest step of the
# highest priority first. ``normal`` keeps the queue's own name.
PRIORITIES = ("high", "normal", "low")
NORMAL = "normal"
PRIORITY_NUMBERS = {"high": 0, "normal": 3, "low": 6}
PRIORITY_STEPS = tuple(PRIORITY_NUMBERS.values())


def priority_list(queue: str, priority: str = NORMAL) -> str:
    """The list of *queue* that holds its steps of *priority* (unknown: normal)."""
    return f"{queue}:{priority}" if priority in ("high", "low") else queue


def priority_lists(queue: str) -> tuple[str, str, str]:
    """*queue*'s lists in the order a worker takes from them: high, normal, low."""
    return priority_list(queue, "high"), queue, priority_list(queue, "low")


def priority_of_number(number: int) -> str:
    """The priority of kombu's *number* (one of ``PRIORITY_STEPS``); normal for any other."""
    return next((name for name, n in PRIORITY_NUMBERS.items() if n == number), NORMAL)


def is_step_queue(queue: str) -> bool:
    """Whether *queue* is a pool's, the built-in worker's or a target's step queue."""
    return (queue == BUILTIN_QUEUE or queue.startswith(POOL_QUEUE_PREFIX)
            or queue.startswith(TARGET_QUEUE_PREFIX))


def deployment(deployment_id: str) -> str:
    return f"{PREFIX}deployment:{deployment_id}"


# -- a pool's own space -----------------------------------------------------------------------

def space(pool: str) -> str:
    """The prefix of every key that is *pool*'s own. The braces end the pool's name, so one
    pool's space is never inside another's (``{target}:`` and ``{target:web}:``)."""
    return f"{SPACE_PREFIX}{pool}}}:"


def step_id(pool: str, own: str) -> str:
    return f"{pool}{STEP_ID_SEPARATOR}{own}"


def pool_of(step_id: str) -> str:
    """The pool a step id names; ValueError for an id of no pool (not made by workerpool)."""
    pool, separator, own = step_id.partition(STEP_ID_SEPARATOR)
    if not separator or not pool or not own or "}" in pool:
        raise ValueError(f"{step_id!r} is not a step id (<pool>~<id>)")
    return pool


def step(step_id: str) -> str:
    return f"{space(pool_of(step_id))}step:{step_id}"


def step_log(step_id: str) -> str:
    return step(step_id) + ":log"


def step_artifacts(step_id: str) -> str:
    return step(step_id) + ":artifacts"


def step_artifact(step_id: str, name: str) -> str:
    return f"{step(step_id)}:artifact:{name}"


def workers(pool: str) -> str:
    return space(pool) + "workers"


def live(pool: str) -> str:
    """The pool's index of live workers: a sorted set of worker instances, each scored with
    the time (ms, Redis's clock) its last heartbeat expires. Written by register and every
    heartbeat, pruned by deregister and reap; routing and status read it instead of every
    worker of the cluster."""
    return space(pool) + "live"


def states(pool: str) -> str:
    """Beside ``live``: a hash of worker instance -> the state its last heartbeat gave
    (Starting, Healthy, Unhealthy, Draining)."""
    return space(pool) + "states"


def heartbeat_prefix(pool: str) -> str:
    return space(pool) + "hb:"


def heartbeat(pool: str, instance: str) -> str:
    return heartbeat_prefix(pool) + instance


def pending(pool: str) -> str:
    return space(pool) + "pending"


def running(pool: str) -> str:
    return space(pool) + "running"


RECENT_STEPS = 500  # the steps of a pool its recent index keeps, newest first


def recent(pool: str) -> str:
    """The pool's index of recent steps: a sorted set of step id -> queued time (seconds),
    capped at the newest RECENT_STEPS by the enqueue that adds to it, so a console lists a
    pool's recent steps without scanning its keys and the index never grows per step."""
    return space(pool) + "recent"


def reaper(pool: str) -> str:
    return space(pool) + "reaper"


def requeue_check(pool: str, run_id: str) -> str:
    """Set once per Redis run by the reaper that checked the pool's queued steps for lost
    messages."""
    return f"{space(pool)}requeue-check:{run_id}"


def control(pool: str, instance: str) -> str:
    return f"{space(pool)}control:{instance}"


def pool_control(pool: str) -> str:
    """The channel on which every worker of *pool* hears it paused and resumed."""
    return f"{space(pool)}control:pool"


def done(pool: str, deployment_id: str) -> str:
    """Where the deployment's runs in *pool* announce their end to the orchestrator."""
    return f"{space(pool)}done:{deployment_id}"


def dropped(pool: str) -> str:
    return space(pool) + "dropped"


def crashes(pool: str) -> str:
    return space(pool) + "crashes"


def ended(pool: str) -> str:
    """Steps of *pool* ended, by terminal state: a Prometheus counter kept by Redis."""
    return space(pool) + "ended"


def durations(pool: str) -> str:
    """The histogram of *pool*'s ended steps' running times."""
    return space(pool) + "durations"


def dead(pool: str) -> str:
    return f"{PREFIX}dead:{pool}"


def kombu_keys(pool: str) -> dict[str, str]:
    """kombu's transport options naming its unacknowledged-message keys in *pool*'s space."""
    return {"unacked_key": space(pool) + "kombu:unacked",
            "unacked_index_key": space(pool) + "kombu:unacked_index",
            "unacked_mutex_key": space(pool) + "kombu:unacked_mutex"}


FEEDS = PREFIX + "feeds"
BUILTIN_PACKAGES = PREFIX + "builtin-packages"


def package_field(package_id: str, version: str) -> str:
    """The field of a built-in package in BUILTIN_PACKAGES."""
    return f"{package_id}/{version}".lower()


def builtin_package_data(package_id: str, version: str) -> str:
    return f"{PREFIX}builtin-package:{package_field(package_id, version)}"


def package_sha(pool: str, feed: str, package_id: str, version: str) -> str:
    return f"{space(pool)}package-sha:{feed}/{package_field(package_id, version)}"
