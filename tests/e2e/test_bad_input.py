"""Bad input: one clear line on stderr, the documented exit code, never a traceback."""

from __future__ import annotations

import pytest
from conftest import one_line_error

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.errors import Refused
from workerpool.core.packageref import PackageRef


@pytest.mark.parametrize("args,needle", [
    (["run", "--script", ""], "script is empty"),
    (["run", "--script", "   \n"], "script is empty"),
    (["run", "--syntax", "cobol", "--script", "x"], "'cobol' is not one of"),
    (["run", "--var", "novalue", "--script", "x"], "NAME=VALUE"),
    (["run", "--var", "=v", "--script", "x"], "NAME=VALUE"),
    (["run", "--sensitive-var", "noequals", "--script", "x"], "NAME=VALUE"),
    (["run", "--timeout", "0", "--script", "x"], "timeout must be"),
    (["run", "--timeout", "soon", "--script", "x"], "'soon' is not a valid float"),
    (["run", "--lease-timeout", "-1", "--script", "x"], "lease timeout must be"),
    (["run", "--script", "x", "--script-file", "f"], "exactly one of"),
    (["run", "--script-file", "/nonexistent/deploy.sh"], "cannot read --script-file"),
    (["run", "--pool", "P", "--server", "--script", "x"], "either on the server or on a pool"),
    (["run", "--pool", "Unknown Pool", "--script", "x"], "no pool named 'Unknown Pool'"),
    (["pool", "add", ""], "pool name is empty"),
    (["pool", "add", "x" * 101], "limit is 100"),
    (["pool", "add", "!!!"], "no ASCII letters or digits"),
    (["pool", "remove", "Default Worker Pool"], "cannot be removed"),
    (["pool", "show", "ghost"], "no pool named 'ghost'"),
    (["worker", "start"], "exactly one of --pool NAME or --builtin"),
    (["worker", "start", "--pool", "ghost"], "no pool named 'ghost'"),
    (["logs", "0123456789abcdef"], "is not a step id"),
    (["cancel", "pool~0123456789abcdef"], "no step with id"),
    (["nosuchcommand"], "No such command"),
])
def test_refused_with_one_line_and_exit_2(cli, args, needle):
    assert needle in one_line_error(cli(*args))


def test_powershell_without_pwsh_on_the_pool_is_refused(client, start_worker, cli):
    client.pools.add("Windows")
    start_worker("Windows")
    done = cli("run", "--pool", "Windows", "--syntax", "powershell", "--script", "Write-Host")
    assert done.returncode == 2
    assert "pwsh" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("url,code,needle", [
    ("http://localhost:6379", 2, "must start with redis://"),
    ("redis://:6379/0", 2, "has no host"),
    ("redis://localhost:notaport/0", 2, "malformed"),
    ("redis://127.0.0.1:1/0", 3, "unreachable"),
])
def test_redis_url_problems(cli, url, code, needle):
    done = cli("status", extra_env={"WORKERPOOL_REDIS_URL": url})
    assert done.returncode == code, done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_bad_setting_in_environment(cli):
    done = cli("status", extra_env={"WORKERPOOL_HEARTBEAT_INTERVAL": "fast"})
    assert done.returncode == 2 and "not a number" in done.stderr


def test_duplicate_explicit_worker_name_is_refused(client, start_worker, cli):
    client.pools.add("Pool")
    start_worker("Pool", name="db-worker-01")
    done = cli("worker", "start", "--pool", "Pool", "--name", "db-worker-01")
    assert done.returncode == 2 and "already online" in done.stderr


# --- more of the bad-input table (docs/reliability.md, "Bad input"): the CLI ----------------------

HUGE_VALUE = "v" * 120_000


@pytest.mark.parametrize("args,needle", [
    (["run", "--timeout", "inf", "--script", "x"], "at most 31536000 (a year); got inf"),
    (["run", "--timeout", "nan", "--script", "x"], "timeout must be a number of seconds"),
    (["run", "--lease-timeout", "1e12", "--script", "x"], "lease timeout must be"),
    (["run", "--name", "two\nlines", "--script", "x"], "step name must be at most 200"),
    (["run", "--name", "n" * 201, "--script", "x"], "step name must be at most 200"),
    (["run", "--var", "Two\nLines=1", "--script", "x"], "variable name 'Two\\nLines' is invalid"),
    (["run", *[a for n in range(10_001) for a in ("--var", f"V{n}=1")], "--script", "x"],
     "the step has 10001 variables; the limit is 10000"),
    (["run", *[a for n in range(9) for a in ("--var", f"V{n}={HUGE_VALUE}")], "--script", "x"],
     "the step's variables total 1080027 bytes; the limit is 1048576"),
    (["run", "--package", "garbage", "--script", "x"], "is not key=value"),
    (["run", "--package", "name=db,id=Acme,version=1.0,colour=red", "--script", "x"],
     "key 'colour' is unknown"),
    (["run", "--package", "name=../x,id=Acme,version=1.0", "--script", "x"],
     "package reference name '../x'"),
    (["run", "--package", "name=db,id=Acme,version=latest", "--script", "x"],
     "package version 'latest' must start with a digit"),
    (["run", "--package", "name=db,id=Acme,version=1.0,extract=maybe", "--script", "x"],
     "not a yes/no value"),
    (["run", "--package", "name=db,id=Acme*,version=1.0", "--script", "x"],
     "package id 'Acme*'"),
    (["run", "--package", "name=db,id=A,version=1", "--package", "name=db,id=B,version=1",
      "--script", "x"], "names must be unique"),
    (["run", "--package", "name=db,id=A,version=1", "--script-file", "db/../../../etc/passwd"],
     "must be inside an extracted package"),
    (["pool", "add", "DB\nPool"], "control characters"),
    (["pool", "add", "\u6570\u636e\u5e93"], "no ASCII letters or digits"),
    (["pool", "add", "BuiltIn"], "reserved for the built-in worker"),
    (["pool", "show", "*"], "no pool named '*'"),
    (["worker", "start", "--pool", "*"], "no pool named '*'"),
    (["worker", "start", "--builtin", "--name", "w*?[{ x"], "worker name 'w*?[{ x' must be"),
    (["worker", "start", "--builtin", "--name", "../../etc/evil"], "worker name"),
    (["worker", "start", "--builtin", "--name", "two\nlines"], "worker name"),
    (["worker", "start", "--builtin", "--name", "w" * 101], "worker name"),
    (["logs", "workerpool:step:*"], "'workerpool:step:*' is not a step id"),
    (["logs", "p~nothing"], "no step with id 'p~nothing'"),
    (["cancel", "?[x]{y}"], "'?[x]{y}' is not a step id"),
], ids=["timeout-inf", "timeout-nan", "lease-timeout-huge", "name-newline", "name-too-long",
        "var-name-newline", "too-many-vars", "vars-too-big", "package-garbage",
        "package-unknown-key", "package-name-dotdot", "package-version-latest",
        "package-extract-maybe", "package-id-metachar", "package-names-twice",
        "script-file-escapes-package", "pool-name-newline", "pool-name-no-ascii",
        "pool-name-reserved", "pool-show-star", "worker-pool-star", "worker-name-metachars",
        "worker-name-path", "worker-name-newline", "worker-name-too-long", "logs-key-pattern",
        "logs-unknown-step", "cancel-glob"])
def test_more_refusals_with_one_line_and_exit_2(cli, args, needle):
    assert needle in one_line_error(cli(*args))


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


ALIAS_BOMB = "\n".join(["name: P", "steps: [{name: A, script: echo}]",
                        "x0: &x0 [a, a, a, a, a, a, a, a]",
                        *[f"x{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 8)}]" for n in range(1, 9)]])


@pytest.mark.parametrize("command,make,needle", [
    ("run", lambda d: _write(d / "huge.sh", b"# pad\n" * 900_000), "over the 1000000-byte limit"),
    ("run", lambda d: "/dev/zero", "over the 1000000-byte limit"),
    ("run", lambda d: _write(d / "nul.sh", b"echo a\0b\n"), "contains a NUL byte"),
    ("run", lambda d: _write(d / "latin1.sh", b"echo caf\xe9\n"),
     "is not UTF-8 text (byte 0xe9 at offset 8)"),
    ("run", lambda d: _write(d / "binary.sh", b"\x7fELF\x02\x01\x01\x00\xff\xfe"),
     "is not UTF-8 text"),
    ("run", lambda d: str(d), "Is a directory"),
    ("deploy", lambda d: _write(d / "p.yaml", b"\x7fELF\x02\x01\x01\x00\xff\xfe"),
     "the process file is not UTF-8 text"),
    ("deploy", lambda d: _write(d / "p.yaml", b"name: [unclosed\n"), "line 2 column 1"),
    ("deploy", lambda d: _write(d / "p.yaml", ALIAS_BOMB.encode()), "alias bomb"),
    ("deploy", lambda d: _write(d / "p.yaml", b"name: P\nstep: []\n"), "did you mean 'steps'?"),
    ("deploy", lambda d: _write(d / "p.yaml", b"name: P\nsteps: [{name: A, script: echo, "
                                              b"timeout: soon}]\n"), "field 'timeout'"),
    ("deploy", lambda d: _write(d / "p.yaml", b"name: {a: b}\nsteps: [{name: A, script: x}]\n"),
     "must be text"),
    ("deploy", lambda d: _write(d / "p.yaml", b""), "a process file is a mapping"),
    ("deploy", lambda d: str(d / "missing.yaml"), "cannot read the process file"),
    ("deploy", lambda d: "/dev/zero", "the process file is 1000001 or more bytes"),
    ("deploy", lambda d: str(d), "is a directory"),
], ids=["huge-script", "dev-zero-script", "nul-script", "latin1-script", "binary-script",
        "directory-script", "binary-process", "yaml-syntax", "yaml-bomb", "unknown-key",
        "wrong-type", "name-not-text", "empty-process", "missing-process", "dev-zero-process",
        "directory-process"])
def test_bad_files_are_refused_with_one_line(cli, tmp_path, command, make, needle):
    path = make(tmp_path)
    args = ["run", "--script-file", path] if command == "run" else \
        ["deploy", path, "--environment", "Test"]
    assert needle in one_line_error(cli(*args))


# --- the Python API: one BadInput naming what is wrong, never an AttributeError ---------------


@pytest.mark.parametrize("call,needle", [
    (lambda c: c.run("echo hi"), "run() takes a ScriptStep, not str"),
    (lambda c: c.run(ScriptStep(script=["echo"])), "ScriptStep.script must be text (str), not "
                                                   "list"),
    (lambda c: c.run(ScriptStep(script="x", pool=5)), "ScriptStep.pool must be text (str) or "
                                                      "None, not int"),
    (lambda c: c.run(ScriptStep(script="x", variables=["A=1"])),
     "ScriptStep.variables must be a dict"),
    (lambda c: c.run(ScriptStep(script="x", variables={"A": 1})),
     "ScriptStep.variables['A'] must be text (str), not int"),
    (lambda c: c.run(ScriptStep(script="x", sensitive_variables={"P": None})),
     "ScriptStep.sensitive_variables['P'] must be text"),
    (lambda c: c.run(ScriptStep(script="x", timeout="5")), "ScriptStep.timeout must be a number"),
    (lambda c: c.run(ScriptStep(script="x", timeout=True)), "ScriptStep.timeout must be a number"),
    (lambda c: c.run(ScriptStep(script="x", timeout=float("inf"))), "got inf"),
    (lambda c: c.run(ScriptStep(script="x", retry_on_worker_lost="yes")),
     "retry_on_worker_lost must be True or False"),
    (lambda c: c.run(ScriptStep(script="x", packages=("name=db,id=A,version=1",))),
     "ScriptStep.packages must be a tuple of PackageRef"),
    (lambda c: c.run(ScriptStep(script="x", substitute="*.config")),
     "ScriptStep.substitute must be a tuple of glob patterns"),
    (lambda c: c.run(ScriptStep(script="x" * 5_000_000)), "the limit is 1000000"),
    (lambda c: c.run(ScriptStep(script="x", name="n" * 10_000)), "step name must be at most"),
    (lambda c: c.run(ScriptStep(script="x", variables={"V": "v" * 200_000})),
     "variable 'V' is 200002 bytes; the limit is 131070"),
    (lambda c: c.run(ScriptStep(script="x", variables={f"V{n}": "1" for n in range(50_000)})),
     "the step has 50000 variables"),
    (lambda c: c.run(ScriptStep(script="x", variables={"a*b?[c]": "\x00"})), "NUL byte"),
    (lambda c: PackageRef(123, "Acme", "1.0"), "package reference name 123"),
    (lambda c: PackageRef("db", "Acme", "1.0", extract="yes"), "extract='yes' must be True"),
    (lambda c: c.pools.add(None), "pool name must be text (str), not NoneType"),
    (lambda c: c.pools.add("DB\x00Pool"), "control characters"),
    (lambda c: c.deploy(42, "Test"), "deploy() takes a Process or the path"),
    (lambda c: c.step("*"), "'*' is not a step id"),
], ids=["run-str", "script-list", "pool-int", "variables-list", "variable-int",
        "sensitive-none", "timeout-str", "timeout-bool", "timeout-inf", "retry-str",
        "packages-str", "substitute-str", "script-5mb", "name-10k", "variable-200kb",
        "variables-50k", "variable-nul", "packageref-int", "packageref-extract-str",
        "pool-add-none", "pool-add-nul", "deploy-int", "step-star"])
def test_python_api_misuse_is_one_bad_input(client, call, needle):
    with pytest.raises(Refused) as caught:
        call(client)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)
    assert client.redis.llen(keys.pool_queue("default-worker-pool")) == 0
    assert client.redis.llen(keys.BUILTIN_QUEUE) == 0
