"""The local Lambda runtime: worker processes that import, configure and limit a function as Lambda does.

Every test writes a throwaway code directory with handler modules and runs it
through `LambdaFunction` in real worker processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.deps_layer import REPO_ROOT, local_layer, runtime_provided
from local.lambda_runtime.environment import Credentials
from local.lambda_runtime.errors import LambdaFunctionError, LambdaInitError, LambdaShutdownError, LambdaTimeoutError
from local.lambda_runtime.function import LambdaFunction
from local.lambda_runtime.preflight import PreflightError, preflight

HANDLERS = """
import json
import os
import sys
import time
from pathlib import Path

COUNT = 0
PRELOADED = "boto3" in sys.modules  # before this environment's init phase: only if its template imported it
INIT_TOKEN = os.urandom(8).hex()  # module-level state: each environment's init phase makes its own
if "INIT_LOG" in os.environ:  # a side effect of the init phase, one line per environment that ran it
    with open(os.environ["INIT_LOG"], "a") as init_log:
        init_log.write(f"{os.getpid()}\\n")


def environment(event, context):
    return dict(os.environ)


def identity(event, context):
    global COUNT
    COUNT += 1
    return {"pid": os.getpid(), "count": COUNT}


def imports(event, context):
    import boto3
    import pydantic

    try:
        import pytest  # noqa: F401
    except ImportError as error:
        pytest_error = str(error)
    else:
        pytest_error = None
    return {
        "path": sys.path,
        "boto3": boto3.__file__,
        "pydantic": pydantic.__file__,
        "pytest_error": pytest_error,
        "cwd": os.getcwd(),
    }


def context_of(event, context):
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env_log_stream": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
    }


def facts(event, context):
    import gc
    import random
    import uuid

    import boto3  # noqa: F401  what real handlers import on first use: a template preloads it for the next ones
    import pydantic  # noqa: F401

    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory listing's own descriptor, closed by now
            pass
    global COUNT
    COUNT += 1
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "sid": os.getsid(0),
        "fds": fds,
        "threads": len(os.listdir("/proc/self/task")),
        "frozen": gc.get_freeze_count(),
        "init_token": INIT_TOKEN,
        "count": COUNT,
        "random": random.random(),
        "uuid": str(uuid.uuid4()),
        "stage": os.environ.get("STAGE"),
        "preloaded": PRELOADED,
    }


def sleep(event, context):
    time.sleep(event["seconds"])
    return os.getpid()


def in_flight(event, context):
    # Marks itself running, counts who else is, and waits for the test's release file.
    directory = Path(event["dir"])
    marker = directory / f"running-{event['n']}"
    marker.touch()
    seen = len(list(directory.glob("running-*")))
    deadline = time.monotonic() + 20
    while not (directory / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    marker.unlink()
    return seen


def fails(event, context):
    raise ValueError(f"bad input: {event['why']}")


def noisy(event, context):
    print("printed to stdout")
    sys.stdout.write("\\x00\\x00\\x00\\x05{junk")
    sys.stdout.flush()
    os.write(1, b"\\x00\\x00\\x00\\x02{}")
    print("to stderr", file=sys.stderr)
    return {"fine": True}


def shouts(event, context):
    print("x" * event["size"])
    return "done"


def exits(event, context):
    if event.get("exit"):
        os._exit(3)
    return os.getpid()


def unserializable(event, context):
    return {"when": object()}


def decimals(event, context):
    from decimal import Decimal

    return {"int": Decimal("3"), "float": Decimal("1.5")}
"""


@dataclass(frozen=True)
class LocalDeps:
    layer_dir: Path  # the dependency layer's stand-in (it holds python/)
    runtime_dir: Path  # what the Lambda runtime ships: boto3


@pytest.fixture(scope="module")
def deps() -> LocalDeps:
    from infra.layers_build import ensure_deps_layer

    return LocalDeps(local_layer(ensure_deps_layer().path), runtime_provided())


@pytest.fixture
def code(tmp_path: Path) -> Path:
    directory = tmp_path / "task"
    directory.mkdir()
    (directory / "app.py").write_text(HANDLERS)
    return directory


@pytest.fixture
async def make(code: Path, deps: LocalDeps) -> AsyncIterator[Callable[..., LambdaFunction]]:
    made: list[LambdaFunction] = []

    def make(handler: str, **options: Any) -> LambdaFunction:
        options.setdefault("code_dirs", [code])
        options.setdefault("layer_dirs", [deps.layer_dir])
        options.setdefault("runtime_dir", deps.runtime_dir)
        function = LambdaFunction(options.pop("name", "quanttrade-test"), handler, **options)
        made.append(function)
        return function

    yield make
    for function in made:
        await function.aclose()


async def eventually(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Killed but not yet reaped shows as a zombie; reaped since the signal above, it has no entry, and reaped
    # between opening its stat file and reading it, the read fails with ESRCH (ProcessLookupError).
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return status.startswith("Z")


# ---------------------------------------------------------------- environment and imports


async def test_the_environment_is_the_functions_plus_lambdas_own_and_nothing_from_the_parent(
    make: Callable[..., LambdaFunction], code: Path, deps: LocalDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a variable set in the process that runs the stack, and a function with its own environment
    monkeypatch.setenv("QT_PARENT_ONLY_MARKER", "must-not-leak")
    function = make(
        "app.environment",
        memory_mb=512,
        environment={"CONNECTIONS_TABLE": "connections", "POWERTOOLS_SERVICE_NAME": "websocket"},
        credentials=Credentials("AKIDROLE", "role-secret", "role-token"),
        endpoint_url="http://127.0.0.1:4566",
        region="eu-west-1",
    )

    # WHEN the handler reports its environment
    env = await function.invoke({})

    # THEN it is exactly the configured variables plus what the Lambda runtime sets
    assert env.pop("_X_AMZN_TRACE_ID").startswith("Root=1-")  # per invocation, as the runtime publishes it
    assert env.pop("AWS_LAMBDA_LOG_STREAM_NAME").startswith(time.strftime("%Y/%m/%d/[$LATEST]", time.gmtime()))
    assert env == {
        "CONNECTIONS_TABLE": "connections",
        "POWERTOOLS_SERVICE_NAME": "websocket",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "AWS_ACCESS_KEY_ID": "AKIDROLE",
        "AWS_SECRET_ACCESS_KEY": "role-secret",
        "AWS_SESSION_TOKEN": "role-token",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_LAMBDA_FUNCTION_NAME": "quanttrade-test",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/quanttrade-test",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "LAMBDA_TASK_ROOT": str(code),
        "LAMBDA_RUNTIME_DIR": str(deps.runtime_dir),
        "LANG": "en_US.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TZ": ":UTC",
        "_HANDLER": "app.environment",
    }


def test_reserved_variables_cannot_be_configured(code: Path) -> None:
    # GIVEN an environment that tries to set what only Lambda sets
    # WHEN the function is built THEN it is refused with the offending names
    with pytest.raises(ValueError, match=r"reserved Lambda environment variables.*AWS_REGION"):
        LambdaFunction("f", "app.identity", code_dirs=[code], environment={"AWS_REGION": "x"})
    with pytest.raises(ValueError, match="must be strings"):
        LambdaFunction("f", "app.identity", code_dirs=[code], environment={"PORT": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="needs code_dirs"):
        LambdaFunction("f", "app.identity")


async def test_imports_come_from_the_code_dir_the_layers_and_the_runtime_only(
    make: Callable[..., LambdaFunction], code: Path, deps: LocalDeps, tmp_path: Path
) -> None:
    # GIVEN a function with a second layer besides the dependency layer
    extra_layer = tmp_path / "shared-layer"
    (extra_layer / "python").mkdir(parents=True)
    function = make("app.imports", layer_dirs=[extra_layer, deps.layer_dir])

    # WHEN the handler reports its import path and where its packages came from
    seen = await function.invoke({})

    # THEN the path is /var/task, each layer's python/ in order, the runtime's packages, then the standard library
    assert seen["path"][:4] == [
        str(code),
        str(extra_layer / "python"),
        str(deps.layer_dir / "python"),
        str(deps.runtime_dir),
    ]
    stdlib = seen["path"][4:]
    assert stdlib and all(entry.startswith(sys.base_prefix) for entry in stdlib)
    assert not any("site-packages" in entry or entry.startswith(str(REPO_ROOT)) for entry in stdlib)
    # AND the third-party packages come from the layer and boto3 from the runtime, not from the venv
    assert seen["pydantic"].startswith(str(deps.layer_dir / "python"))
    assert seen["boto3"].startswith(str(deps.runtime_dir))
    assert seen["pytest_error"] == "No module named 'pytest'"
    # AND the working directory is the task root, as on Lambda
    assert seen["cwd"] == str(code)


# ---------------------------------------------------------------- lifecycle


async def test_environments_are_reused_warm_and_a_timeout_kills_one(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN a function with a one-second timeout and one environment
    function = make("app.identity", timeout_seconds=1, concurrency=1)
    first = await function.invoke({})
    # WHEN it is invoked again THEN the same warm environment answers (module state survives)
    assert await function.invoke({}) == {"pid": first["pid"], "count": 2}

    # WHEN an invocation overruns the timeout
    slow = make("app.sleep", timeout_seconds=1, concurrency=1, name="quanttrade-slow")
    sleeper_pid = await slow.invoke({"seconds": 0})
    with pytest.raises(LambdaTimeoutError, match=r"^Task timed out after 1\.00 seconds$"):
        await slow.invoke({"seconds": 30})

    # THEN its environment is killed and the next invocation starts cold in a new one
    await eventually(lambda: process_gone(sleeper_pid), what="the timed-out environment to be killed")
    assert await slow.invoke({"seconds": 0}) != sleeper_pid
    assert (slow.timeouts, slow.errors, slow.invocations, slow.cold_starts) == (1, 0, 3, 2)
    assert (function.cold_starts, function.invocations) == (1, 2)


async def test_concurrency_caps_the_environments_running_at_once(
    make: Callable[..., LambdaFunction], tmp_path: Path
) -> None:
    # GIVEN a function limited to two concurrent executions and six invocations at once
    function = make("app.in_flight", concurrency=2, timeout_seconds=30)
    markers = tmp_path / "markers"
    markers.mkdir()
    calls = [asyncio.ensure_future(function.invoke({"dir": str(markers), "n": n})) for n in range(6)]

    # WHEN two are running (and the rest queued)
    await eventually(lambda: len(list(markers.glob("running-*"))) == 2, what="two invocations in flight")
    # THEN all six count as in flight, those waiting for an environment too
    assert function.in_flight == 6
    (markers / "release").touch()
    seen = await asyncio.gather(*calls)

    # THEN no invocation ever saw more than two running, only two environments were started, none is in flight
    assert max(seen) == 2
    assert function.cold_starts == 2
    assert (function.invocations, function.in_flight) == (6, 0)


async def test_waiting_for_a_free_environment_does_not_count_toward_the_timeout(
    make: Callable[..., LambdaFunction],
) -> None:
    # GIVEN one environment busy for most of the timeout
    function = make("app.sleep", concurrency=1, timeout_seconds=2)
    await function.init()
    first = asyncio.ensure_future(function.invoke({"seconds": 1.5}))
    # WHEN a second invocation queues behind it for 1.5 s and then runs for 1 s
    second = asyncio.ensure_future(function.invoke({"seconds": 1}))
    # THEN both succeed: each had its whole timeout once it ran
    assert await first == await second
    assert function.timeouts == 0


async def test_an_import_error_is_an_init_error_naming_the_function_and_the_cause(
    make: Callable[..., LambdaFunction], code: Path
) -> None:
    # GIVEN a handler module that needs a package no layer provides
    (code / "connect.py").write_text("import jwt_that_no_layer_has\n\ndef handler(event, context):\n    return 1\n")
    function = make("connect.handler", name="quanttrade-connect")

    # WHEN it is cold-started THEN the error is Lambda's, with the function's name
    with pytest.raises(LambdaInitError) as raised:
        await function.init()
    assert str(raised.value) == (
        "quanttrade-connect: Runtime.ImportModuleError: "
        "Unable to import module 'connect': No module named 'jwt_that_no_layer_has'"
    )
    assert raised.value.error_type == "Runtime.ImportModuleError"

    # AND an invocation fails the same way and counts as an error
    with pytest.raises(LambdaInitError, match="Unable to import module 'connect'"):
        await function.invoke({})
    assert function.errors == 1


async def test_init_errors_of_other_kinds_keep_their_type(make: Callable[..., LambdaFunction], code: Path) -> None:
    # GIVEN a module that fails while importing, a handler name that is missing, and a malformed one
    (code / "broken.py").write_text("import os\n\nTABLE = os.environ['TABLE_THAT_IS_NOT_SET']\n")
    (code / "empty.py").write_text("")
    broken = make("broken.handler", name="quanttrade-broken")
    missing = make("empty.handler", name="quanttrade-missing")
    malformed = make("nodot", name="quanttrade-malformed")

    # WHEN they are all preflighted at once
    with pytest.raises(PreflightError) as raised:
        await preflight([broken, missing, malformed])

    # THEN each failure is reported with its function and Lambda's error type
    failures = {f.function_name: f for f in raised.value.failures if isinstance(f, LambdaInitError)}
    assert len(failures) == len(raised.value.failures) == 3
    assert failures["quanttrade-broken"].error_type == "KeyError"
    assert "TABLE_THAT_IS_NOT_SET" in failures["quanttrade-broken"].error_message
    assert failures["quanttrade-missing"].error_type == "Runtime.HandlerNotFound"
    assert failures["quanttrade-missing"].error_message == "Handler 'handler' missing on module 'empty'"
    assert failures["quanttrade-malformed"].error_type == "Runtime.MalformedHandlerName"
    assert "quanttrade-broken" in str(raised.value) and "quanttrade-missing" in str(raised.value)


async def test_preflight_leaves_healthy_functions_warm(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN two healthy functions WHEN they are preflighted
    functions = [make("app.identity", name="quanttrade-a"), make("app.identity", name="quanttrade-b")]
    await preflight(functions)
    # THEN the first invocation of each finds a warm environment
    for function in functions:
        assert (await function.invoke({}))["count"] == 1
        assert function.cold_starts == 1


async def test_a_handler_exception_is_a_function_error_and_the_trace_goes_to_the_log(
    make: Callable[..., LambdaFunction], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a handler that raises
    caplog.set_level(logging.INFO, logger="quanttrade.local.lambda.log")
    function = make("app.fails", name="quanttrade-fails")

    # WHEN it is invoked
    with pytest.raises(LambdaFunctionError) as raised:
        await function.invoke({"why": "negative size"})

    # THEN the caller gets Lambda's error type and message, no stack trace
    assert raised.value.error_type == "ValueError"
    assert str(raised.value) == "bad input: negative size"
    assert function.errors == 1
    # AND the stack trace is in the function's log, under its name
    await eventually(
        lambda: any("[quanttrade-fails]" in r.getMessage() and "in fails" in r.getMessage() for r in caplog.records),
        what="the stack trace in the log",
    )


async def test_a_handled_error_keeps_the_environment_warm(make: Callable[..., LambdaFunction], code: Path) -> None:
    # GIVEN a function that fails once
    (code / "flaky.py").write_text(
        "import os\nCALLS = []\n\ndef handler(event, context):\n"
        "    CALLS.append(1)\n    if len(CALLS) == 1:\n        raise RuntimeError('first')\n    return os.getpid()\n"
    )
    function = make("flaky.handler")
    with pytest.raises(LambdaFunctionError):
        await function.invoke({})
    # WHEN it is invoked again THEN the same environment answers (Lambda does not recycle on a function error)
    await function.invoke({})
    assert function.cold_starts == 1


async def test_the_context_is_the_runtimes(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN a function with 512 MB and a 5 s timeout
    function = make("app.context_of", memory_mb=512, timeout_seconds=5, account="111122223333")
    # WHEN it reports its context
    context = await function.invoke({}, trace_id="Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0")
    # THEN it carries what awslambdaric's does, memory as a string
    assert context["memory_limit_in_mb"] == "512"
    assert context["function_name"] == "quanttrade-test"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:111122223333:function:quanttrade-test"
    assert context["log_group_name"] == "/aws/lambda/quanttrade-test"
    assert context["log_stream_name"] == context["env_log_stream"]
    assert 0 < context["remaining_ms"] <= 5000
    assert len(context["aws_request_id"]) == 36
    # AND the invocation's trace header is published as the runtime does
    assert context["trace"] == "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0"
    # AND without one, Lambda's own unsampled header
    assert re.fullmatch(
        r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=0", (await function.invoke({}))["trace"]
    )


async def test_what_the_handler_prints_never_corrupts_the_channel(
    make: Callable[..., LambdaFunction], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a handler that prints, writes frame-like bytes to fd 1 and logs to stderr
    caplog.set_level(logging.INFO, logger="quanttrade.local.lambda.log")
    function = make("app.noisy")
    # WHEN it is invoked twice THEN both answers arrive intact
    assert await function.invoke({}) == {"fine": True}
    assert await function.invoke({}) == {"fine": True}
    # AND what it printed reached the log, named after the function
    await eventually(
        lambda: any(r.getMessage() == "[quanttrade-test] printed to stdout" for r in caplog.records),
        what="the handler's print in the log",
    )


async def test_a_log_line_longer_than_the_reader_limit_neither_blocks_nor_breaks_the_function(
    make: Callable[..., LambdaFunction],
) -> None:
    # GIVEN a handler that prints one 3 MB line (more than a pipe holds and than a log line may be)
    function = make("app.shouts")
    # WHEN it is invoked twice THEN both invocations finish in the same environment
    assert await function.invoke({"size": 3 << 20}) == "done"
    assert await function.invoke({"size": 10}) == "done"
    assert function.cold_starts == 1


async def test_an_event_that_is_not_json_is_refused_before_any_environment_sees_it(
    make: Callable[..., LambdaFunction],
) -> None:
    # GIVEN a function with one environment
    function = make("app.identity", concurrency=1)
    # WHEN the event cannot be serialized THEN the call is refused, naming the function
    with pytest.raises(ValueError, match="quanttrade-test: the event is not JSON"):
        await function.invoke({"raw": b"bytes"})
    # AND the environment is still free for the next invocation
    assert (await function.invoke({}))["count"] == 1


async def test_an_environment_that_exits_fails_the_invocation_and_the_next_starts_cold(
    make: Callable[..., LambdaFunction],
) -> None:
    # GIVEN a warm environment whose handler can kill its own interpreter
    function = make("app.exits")
    pid = await function.invoke({})
    # WHEN it does THEN the invocation fails as Lambda's Runtime.ExitError
    with pytest.raises(LambdaFunctionError, match="Runtime exited with error: exit status 3") as raised:
        await function.invoke({"exit": True})
    assert raised.value.error_type == "Runtime.ExitError"
    assert function.errors == 1
    # AND the next invocation starts a new environment
    assert await function.invoke({}) != pid
    assert function.cold_starts == 2


async def test_an_environment_that_died_while_idle_is_replaced(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN a warm environment that something outside kills
    function = make("app.identity")
    pid = (await function.invoke({}))["pid"]
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: function.warm_environments == 0, what="the dead environment to be noticed")
    # WHEN the function is invoked THEN a new environment answers, no error
    assert (await function.invoke({}))["pid"] != pid
    assert (function.errors, function.cold_starts) == (0, 2)


async def test_results_are_json_as_lambda_marshals_them(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN handlers returning DynamoDB numbers and something JSON cannot carry
    assert await make("app.decimals").invoke({}) == {"int": 3, "float": 1.5}
    # WHEN the result cannot be marshalled THEN the invocation fails with Runtime.MarshalError
    with pytest.raises(LambdaFunctionError, match="Unable to marshal response") as raised:
        await make("app.unserializable").invoke({})
    assert raised.value.error_type == "Runtime.MarshalError"


async def test_configure_retires_warm_environments(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN a warm environment
    function = make("app.environment", environment={"STAGE": "one"})
    before = await function.invoke({})
    # WHEN the configuration changes THEN the next invocation starts cold with the new environment
    function.configure(environment={"STAGE": "two"})
    after = await function.invoke({})
    assert (before["STAGE"], after["STAGE"]) == ("one", "two")
    assert function.cold_starts == 2


async def test_shutdown_kills_every_environment_and_the_function_stays_invocable(
    make: Callable[..., LambdaFunction], tmp_path: Path
) -> None:
    # GIVEN a function with one invocation running and one queued behind it
    function = make("app.in_flight", concurrency=1, timeout_seconds=60)
    markers = tmp_path / "markers"
    markers.mkdir()
    running = asyncio.ensure_future(function.invoke({"dir": str(markers), "n": 1}))
    queued = asyncio.ensure_future(function.invoke({"dir": str(markers), "n": 2}))
    await eventually(lambda: (markers / "running-1").exists(), what="the first invocation to run")

    # WHEN the function is shut down
    function.shutdown()

    # THEN both fail at once, and no environment is left
    for call in (running, queued):
        with pytest.raises(LambdaShutdownError):
            await asyncio.wait_for(call, timeout=10)
    assert function.warm_environments == 0
    # AND the next invocation starts a new environment (the killed one never cleaned up its marker)
    after = tmp_path / "after"
    after.mkdir()
    (after / "release").touch()
    assert await function.invoke({"dir": str(after), "n": 3}) == 1
    assert function.cold_starts == 2


async def test_closing_under_load_fails_the_backlog_without_starting_anything(
    make: Callable[..., LambdaFunction], tmp_path: Path
) -> None:
    # GIVEN four environments busy and forty invocations queued behind them
    function = make("app.in_flight", concurrency=4, timeout_seconds=60)
    markers = tmp_path / "markers"
    markers.mkdir()
    calls = [asyncio.ensure_future(function.invoke({"dir": str(markers), "n": n})) for n in range(44)]
    await eventually(lambda: len(list(markers.glob("running-*"))) == 4, what="four invocations running")

    # WHEN the function is closed
    await function.aclose()

    # THEN every invocation has failed with the shutdown, no environment was started for the backlog,
    # and no process is left
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=10)
    assert all(isinstance(outcome, LambdaShutdownError) for outcome in outcomes)
    assert function.cold_starts == 4
    assert function.warm_environments == 0


async def test_aclose_waits_for_the_processes_to_exit(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN two warm environments
    function = make("app.identity", concurrency=2)
    pids = [r["pid"] for r in await asyncio.gather(function.invoke({}), function.invoke({}))]
    # WHEN the function is closed THEN their processes are gone when aclose returns
    await function.aclose()
    assert all(process_gone(pid) for pid in set(pids))


def test_a_callable_handler_takes_no_code(code: Path) -> None:
    # GIVEN the in-process mode of the gateway's and pumps' tests WHEN given code dirs THEN it is refused
    with pytest.raises(ValueError, match="takes no code or layers"):
        LambdaFunction("f", lambda event, context: None, code_dirs=[code])


# ---------------------------------------------------------------- idle environments shut down


async def burst(function: LambdaFunction, markers: Path, size: int) -> list[int]:
    """`size` invocations of `app.in_flight` held until all run at once, so that the function scales out to as
    many environments; their process ids."""
    calls = [asyncio.ensure_future(function.invoke({"dir": str(markers), "n": n})) for n in range(size)]
    await eventually(lambda: len(list(markers.glob("running-*"))) == size, what=f"{size} invocations in flight")
    pids = function.environment_pids
    (markers / "release").touch()
    await asyncio.gather(*calls)
    return pids


async def test_environments_idle_past_the_limit_are_shut_down_and_the_next_invocation_starts_cold(
    make: Callable[..., LambdaFunction], tmp_path: Path
) -> None:
    # GIVEN a function that a burst of three invocations scaled out to three environments
    function = make("app.in_flight", concurrency=3, timeout_seconds=30, idle_limit_seconds=0.3)
    markers = tmp_path / "markers"
    markers.mkdir()
    pids = await burst(function, markers, 3)
    assert (len(pids), function.cold_starts) == (3, 3)
    templates = function.template_pids
    assert templates

    # WHEN no invocation comes for longer than the idle limit
    # THEN every environment is shut down, its process gone, each counted
    await eventually(lambda: function.warm_environments == 0, what="the idle environments to be shut down")
    await eventually(lambda: all(process_gone(pid) for pid in pids), what="their processes to exit")
    assert (function.reaped, function.errors) == (3, 0)
    # AND the template they were forked from is kept for the next cold start
    assert function.template_pids == templates

    # WHEN the function is invoked again THEN it starts cold in a new environment and succeeds
    assert await function.invoke({"dir": str(markers), "n": 3}) == 1
    (pid,) = function.environment_pids
    assert pid not in pids
    assert (function.cold_starts, function.errors, function.reaped) == (4, 0, 3)


async def test_an_environment_invoked_more_often_than_the_limit_keeps_running_with_its_module_state(
    make: Callable[..., LambdaFunction],
) -> None:
    # GIVEN a function whose environments are shut down after half a second idle
    function = make("app.identity", idle_limit_seconds=0.5)
    answers = [await function.invoke({})]
    # WHEN it is invoked every 0.1 s for four times the limit
    until = time.monotonic() + 2.0
    while time.monotonic() < until:
        await asyncio.sleep(0.1)
        answers.append(await function.invoke({}))
    # THEN the one environment answered every time and its module state counted every invocation
    assert {answer["pid"] for answer in answers} == {answers[0]["pid"]}
    assert [answer["count"] for answer in answers] == list(range(1, len(answers) + 1))
    assert (function.reaped, function.cold_starts) == (0, 1)
    # AND once the invocations stop it is shut down like any other
    await eventually(lambda: function.reaped == 1, what="the environment to be shut down once idle")
    await eventually(lambda: process_gone(answers[0]["pid"]), what="its process to exit")


async def test_an_invocation_longer_than_the_limit_keeps_its_environment(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN a function whose environments are shut down after 0.3 s idle
    function = make("app.sleep", idle_limit_seconds=0.3, timeout_seconds=10)
    # WHEN an invocation runs for three times that THEN its environment is busy, not idle: it answers the next one
    pid = await function.invoke({"seconds": 1})
    assert await function.invoke({"seconds": 0}) == pid
    assert (function.reaped, function.cold_starts, function.errors) == (0, 1, 0)


async def test_a_limit_of_zero_never_shuts_an_environment_down(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN a function that never shuts its environments down for idleness, warm, and one that does after 0.3 s,
    # warmed after it
    kept = make("app.identity", idle_limit_seconds=0, name="quanttrade-kept")
    shut = make("app.identity", idle_limit_seconds=0.3, name="quanttrade-shut")
    kept_pid = (await kept.invoke({}))["pid"]
    await shut.invoke({})
    # WHEN both have been idle long enough for the second's environment to be shut down
    await eventually(lambda: shut.reaped == 1, what="the second function's environment to be shut down")
    # THEN the first's environment is still there, with its module state
    assert (kept.warm_environments, kept.reaped) == (1, 0)
    assert await kept.invoke({}) == {"pid": kept_pid, "count": 2}
    assert kept.cold_starts == 1


async def test_reconfiguring_and_closing_leave_no_idle_timer_behind(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN a warm environment waiting out its idle limit
    function = make("app.environment", environment={"STAGE": "one"}, idle_limit_seconds=30)
    await function.invoke({})
    pool = function._pool
    assert pool is not None and len(pool.idle_timers) == 1
    # WHEN the configuration changes THEN the retired environment's timer goes with it
    function.configure(environment={"STAGE": "two"})
    assert pool.idle_timers == {}
    assert (await function.invoke({}))["STAGE"] == "two"
    (timer,) = pool.idle_timers.values()
    # WHEN the function is closed THEN no timer is left to fire, and nothing was counted as shut down for idleness
    await function.aclose()
    assert pool.idle_timers == {} and timer.cancelled()
    assert function.reaped == 0


# ---------------------------------------------------------------- environments forked from a template


async def cold_start_again(function: LambdaFunction, pid: int) -> None:
    """Kill the function's one environment, as something outside would, so that its next invocation starts cold."""
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: function.warm_environments == 0, what="the killed environment to be noticed")


async def test_each_environment_runs_its_own_init_phase_and_owns_its_module_state(
    make: Callable[..., LambdaFunction], tmp_path: Path
) -> None:
    # GIVEN a function whose module records its init phase, started cold three times
    init_log = tmp_path / "init.log"
    function = make("app.facts", environment={"INIT_LOG": str(init_log)})
    seen = []
    for _ in range(3):
        if seen:
            await cold_start_again(function, seen[-1]["pid"])
        seen.append(await function.invoke({}))

    # THEN every environment ran the handler module's import itself: one init line each, its own module state
    assert init_log.read_text().split() == [str(facts["pid"]) for facts in seen]
    assert len({facts["init_token"] for facts in seen}) == 3
    assert [facts["count"] for facts in seen] == [1, 1, 1]
    assert function.cold_starts == 3
    # AND the later ones were forked from the configuration's template, whose imports they share
    (template_pid,) = function.template_pids
    assert {facts["ppid"] for facts in seen} == {template_pid}
    # AND no two environments draw the same random numbers or ids
    assert len({facts["random"] for facts in seen}) == len({facts["uuid"] for facts in seen}) == 3


async def test_a_forked_environment_holds_nothing_of_the_template(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN an environment forked after its template preloaded what the first one imported (boto3, pydantic...)
    function = make("app.facts")
    first = await function.invoke({})
    await cold_start_again(function, first["pid"])

    # WHEN it reports its process
    facts = await function.invoke({})

    # THEN the template had imported boto3 before the environment's init phase (the first environment had not)
    assert (first["preloaded"], facts["preloaded"]) == (False, True)
    # AND the template's objects, those preloads included, were frozen out of the collector's reach before the
    # fork, so that collections in an environment never copy the pages it shares with the template
    assert facts["frozen"] > first["frozen"] > 0
    # AND it is single-threaded, in its own session, and holds stdin, its log and its two channels only: no socket
    assert facts["threads"] == 1
    assert facts["sid"] == facts["pid"]
    assert sorted(facts["fds"], key=int) == ["0", "1", "2", *sorted(set(facts["fds"]) - {"0", "1", "2"}, key=int)]
    assert len(facts["fds"]) == 5
    assert facts["fds"]["0"] == os.devnull
    assert facts["fds"]["1"] == facts["fds"]["2"] and facts["fds"]["1"].startswith("pipe:")
    assert not [link for link in facts["fds"].values() if link.startswith("socket:")]


async def test_an_init_error_in_a_forked_environment_is_the_error_a_fresh_one_reports(
    make: Callable[..., LambdaFunction], code: Path, tmp_path: Path
) -> None:
    # GIVEN a layer module that fails while importing once a flag exists, and a handler that imports it
    layer = tmp_path / "picky-layer"
    (layer / "python").mkdir(parents=True)
    flag = tmp_path / "flag"
    (layer / "python" / "picky_dep.py").write_text(
        f"from pathlib import Path\n\nif Path({str(flag)!r}).exists():\n    raise RuntimeError('the flag says no')\n"
    )
    (code / "picky.py").write_text(
        "import os\n\nimport picky_dep  # noqa: F401\n\ndef handler(e, c):\n    return os.getpid()\n"
    )
    function = make("picky.handler", name="quanttrade-picky", layer_dirs=[layer])
    pid = await function.invoke({})

    # WHEN the flag is set and the next environment starts cold, from a template that learned to preload picky_dep
    flag.touch()
    await cold_start_again(function, pid)
    with pytest.raises(LambdaInitError) as raised:
        await function.invoke({})

    # THEN that cold start fails with the module's own error, as an interpreter started fresh reports it
    assert str(raised.value) == "quanttrade-picky: RuntimeError: the flag says no"
    assert (function.errors, function.cold_starts) == (1, 2)
    # AND so does a function whose first environment meets it
    fresh = make("picky.handler", name="quanttrade-picky-fresh", layer_dirs=[layer])
    with pytest.raises(LambdaInitError) as fresh_raised:
        await fresh.init()
    assert (fresh_raised.value.error_type, fresh_raised.value.error_message) == ("RuntimeError", "the flag says no")


async def test_a_timeout_kills_only_its_own_forked_environment(make: Callable[..., LambdaFunction]) -> None:
    # GIVEN two environments of a function with a one-second timeout, forked from one template
    function = make("app.sleep", timeout_seconds=1, concurrency=2)
    pids = set(await asyncio.gather(function.invoke({"seconds": 0.5}), function.invoke({"seconds": 0.5})))
    assert len(pids) == 2
    templates = function.template_pids

    # WHEN one invocation overruns
    with pytest.raises(LambdaTimeoutError):
        await function.invoke({"seconds": 30})

    # THEN exactly one environment is killed; the other and the template live on, and the other answers warm
    await eventually(lambda: sum(process_gone(pid) for pid in pids) == 1, what="one environment to be killed")
    (survivor,) = [pid for pid in pids if not process_gone(pid)]
    assert await function.invoke({"seconds": 0}) == survivor
    assert function.template_pids == templates
    assert (function.timeouts, function.cold_starts) == (1, 2)


async def test_a_new_configuration_forks_from_a_new_template_with_the_new_environment(
    make: Callable[..., LambdaFunction],
) -> None:
    # GIVEN a function with two environments of its first configuration behind it
    function = make("app.facts", environment={"STAGE": "one"})
    first = await function.invoke({})
    await cold_start_again(function, first["pid"])
    assert (await function.invoke({}))["stage"] == "one"
    (old_template,) = function.template_pids

    # WHEN it is reconfigured and started cold twice
    function.configure(environment={"STAGE": "two"})
    after = [await function.invoke({})]
    await cold_start_again(function, after[0]["pid"])
    after.append(await function.invoke({}))

    # THEN both new environments see the new variables, forked from another template; the old one has gone
    assert [facts["stage"] for facts in after] == ["two", "two"]
    (new_template,) = function.template_pids
    assert new_template != old_template and {facts["ppid"] for facts in after} == {new_template}
    await eventually(lambda: process_gone(old_template), what="the retired template to exit")


async def test_a_dead_template_takes_its_environments_and_the_next_cold_start_starts_another(
    make: Callable[..., LambdaFunction],
) -> None:
    # GIVEN a warm environment and its template
    function = make("app.facts")
    before = await function.invoke({})
    (template,) = function.template_pids

    # WHEN the template is killed
    os.kill(template, signal.SIGKILL)

    # THEN its environment dies with it (nothing outlives the runtime that accounts for it)
    await eventually(lambda: process_gone(before["pid"]), what="the environment to follow its template")
    await eventually(lambda: function.warm_environments == 0, what="the dead environment to be noticed")
    # AND the next invocation starts cold from a new template, without an error
    after = await function.invoke({})
    assert after["ppid"] != template and function.template_pids == [after["ppid"]]
    assert (function.errors, function.cold_starts) == (0, 2)


@pytest.mark.parametrize(
    ("what", "source"),
    [
        (
            "threads",
            "import threading\nimport time\n\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
        ),
        ("a socket", "import socket\n\nKEPT = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"),
    ],
)
async def test_a_layer_that_starts_a_thread_or_opens_a_socket_at_import_is_never_forked(
    make: Callable[..., LambdaFunction],
    code: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    what: str,
    source: str,
) -> None:
    # GIVEN a layer module that starts a thread or opens a socket when imported, and a handler that imports it
    layer = tmp_path / "busy-layer"
    (layer / "python").mkdir(parents=True)
    (layer / "python" / "busy_dep.py").write_text(source)
    (code / "busy.py").write_text(
        "import os\n\nimport busy_dep  # noqa: F401\n\ndef handler(e, c):\n    return os.getpid()\n"
    )
    function = make("busy.handler", layer_dirs=[layer])
    pid = await function.invoke({})

    # WHEN the next environment starts cold, after the template would have imported that module
    await cold_start_again(function, pid)
    second = await function.invoke({})

    # THEN the template refuses to fork it into every environment: the environment is a fresh interpreter
    assert second != pid and function.errors == 0
    assert Path(f"/proc/{second}/stat").read_text().split(") ", 1)[1].split()[1] == str(os.getpid())
    assert any(what in record.getMessage() and "fresh interpreter" in record.getMessage() for record in caplog.records)
