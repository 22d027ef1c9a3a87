"""The shared package's observability: no side effects at import, one Logger with the correlation id for
handlers and domain, metrics published once per invocation."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import warnings
from typing import Any

import pytest

from quanttrade_ws import fanout, observability, topology
from quanttrade_ws.observability import metrics, publish_metrics
from tests.lambda_events import LambdaContext


def test_importing_the_shared_package_changes_neither_the_environment_nor_the_warning_filters() -> None:
    # GIVEN a fresh interpreter's environment and warning filters
    probe = """
import json, os, warnings
env, filters = dict(os.environ), list(warnings.filters)
import quanttrade_ws, quanttrade_ws.observability, quanttrade_ws.runtime, quanttrade_ws.fanout
import quanttrade_ws.service.dispatch
print(json.dumps({"env": sorted(set(os.environ.items()) ^ set(env.items())), "filters": warnings.filters != filters}))
"""
    # WHEN every module a handler imports is imported
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "", "PYTHONPATH": ":".join(sys.path)},
        timeout=60,
    )
    # THEN neither changed
    assert json.loads(result.stdout) == {"env": [], "filters": False}


def test_an_invocation_without_metrics_writes_nothing_and_warns_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a handler that records no metric
    @publish_metrics
    def quiet(event: dict[str, Any], context: Any) -> str:
        return "done"

    # WHEN it is invoked, with every warning an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quiet({}, None)
    # THEN it answers, and nothing was written
    assert result == "done"
    assert capsys.readouterr().out == ""


def test_the_metrics_of_a_failing_invocation_are_still_published(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN metrics enabled (the test suite disables them), and a handler that records a metric and then fails
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()

    @publish_metrics
    def failing(event: dict[str, Any], context: Any) -> None:
        metrics.add_metric(name="ConnectionsOpened", unit="Count", value=1)
        raise RuntimeError("boom")

    # WHEN it is invoked
    with pytest.raises(RuntimeError):
        failing({}, None)
    # THEN one EMF line carries the metric, and nothing is left for the next invocation
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["ConnectionsOpened"] == [1.0]
    assert not metrics.metric_set


def test_a_domain_line_carries_the_invocations_correlation_id_and_the_stacks_service_name() -> None:
    # GIVEN the one Logger's output captured as the Lambda runtime would see it
    powertools = logging.getLogger(observability.SERVICE)
    formatter = next(h.formatter for h in powertools.handlers if h.formatter is not None)
    stream = io.StringIO()
    capture = logging.StreamHandler(stream)
    capture.setFormatter(formatter)
    powertools.addHandler(capture)

    # and a handler whose domain code logs
    @observability.logger.inject_lambda_context(correlation_id_path="requestContext.connectionId")
    def handler(event: dict[str, Any], context: Any) -> None:
        fanout.logger.warning("could not close an unreachable connection")

    # WHEN it is invoked for a connection
    try:
        handler({"requestContext": {"connectionId": "conn-1="}}, LambdaContext())
    finally:
        powertools.removeHandler(capture)
    # THEN the domain's line is structured, with the connection id as correlation id and the stack's service name
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["message"] == "could not close an unreachable connection"
    assert line["correlation_id"] == "conn-1="
    assert line["service"] == topology.SERVICE_NAME
