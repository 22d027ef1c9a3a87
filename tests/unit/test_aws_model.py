"""bench.aws_model: the simulated services give the results that can be worked out by hand."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import replace

import pytest

from bench.aws_model.deliveries import Deliveries, EventRecord
from bench.aws_model.lambda_function import LambdaFunction
from bench.aws_model.management_api import ManagementApi, SimGateway
from bench.aws_model.profiles import (
    AUDIENCE_QUERY_MS,
    AWS,
    LOCAL,
    STACK_CPU_PER_1000_DELIVERIES,
    local_profile,
    ms,
)
from bench.aws_model.scenario import Scenario, run_scenario
from bench.aws_model.scheduler import Sim
from bench.aws_model.sqs import SimQueue
from bench.aws_model.tally import Tally
from quanttrade_ws.config import Settings
from quanttrade_ws.connection_gateway import Post

SETTINGS = dict(jwt_secret="x" * 40, session_secret="y" * 40)


def _frame(event_id: str) -> bytes:
    return json.dumps({"message_type": "market_data", "payload": {"event_id": event_id}}).encode()


def test_posts_beyond_the_account_quota_take_their_count_over_the_rate() -> None:
    # GIVEN 20,000 posts, 400 requests in flight at 10 ms each (40,000/s wanted), and the account's
    # 10,000 calls/s with no burst; throttled posts retry (the real client's backoff) without giving up
    profile = replace(AWS, post=ms(10, 10), throttled_post=ms(1, 1), post_cpu_seconds=0.0, management_burst=1.0)
    settings = Settings(post_concurrency=400, max_post_attempts=1000, **SETTINGS)
    sim = Sim(seed=3)
    tally = Tally()
    deliveries = Deliveries(tally, keep_latencies=False)
    deliveries.events["e"] = EventRecord("e", "S0", 0.0, 20_000)
    gateway = SimGateway(sim, profile, ManagementApi(profile), deliveries, settings)
    data = _frame("e")
    reports = []

    # WHEN one function posts them all
    sim.spawn(lambda: reports.append(gateway.post_many([Post(f"c{i}", data) for i in range(20_000)])))
    sim.run()

    # THEN all arrive, never sooner than the quota bound 20,000 / 10,000 = 2 s, and throttled posts
    # were retried (the full-jitter backoff leaves part of the quota unused, so later than the bound)
    (report,) = reports
    assert len(report.delivered) == 20_000 and not report.failed
    last = deliveries.events["e"].last_delivery
    assert last >= 2.0
    assert tally.posts / (tally.last_post - tally.first_post) <= 10_000 * 1.001
    assert report.throttle_retries > 0


def test_posts_under_the_quota_are_bound_by_the_lanes_of_one_function() -> None:
    # GIVEN 6,400 posts, 64 in flight at 20 ms each, far below the account quota
    profile = replace(AWS, post=ms(20, 20), post_cpu_seconds=0.0)
    settings = Settings(post_concurrency=64, **SETTINGS)
    sim = Sim()
    tally = Tally()
    deliveries = Deliveries(tally, keep_latencies=False)
    deliveries.events["e"] = EventRecord("e", "S0", 0.0, 6400)
    gateway = SimGateway(sim, profile, ManagementApi(profile), deliveries, settings)

    # WHEN one function posts them
    sim.spawn(lambda: gateway.post_many([Post(f"c{i}", _frame("e")) for i in range(6400)]))
    sim.run()

    # THEN it takes 6,400 / 64 rounds of 20 ms = 2 s, with no throttling
    assert deliveries.events["e"].last_delivery == pytest.approx(2.0, abs=0.021)
    assert tally.throttled == 0


def _queue(sim: Sim, tally: Tally, seconds_per_batch: float) -> tuple[SimQueue, list[tuple[float, float, tuple]]]:
    profile = replace(AWS, sqs_receive=ms(0, 0), sqs_delete=ms(0, 0), invoke=ms(0, 0), cold_start=ms(0, 0))
    profile = replace(profile, event_cpu_seconds=0.0)
    function = LambdaFunction(sim, profile, tally, "fanout", 1.0)
    runs: list[tuple[float, float, tuple]] = []

    def handler(records: list[dict]) -> dict:
        began = sim.now
        sim.sleep(seconds_per_batch)
        runs.append((began, sim.now, tuple(r["attributes"]["MessageGroupId"] for r in records)))
        return {"batchItemFailures": []}

    return SimQueue(sim, profile, tally, "events", "fifo", function, handler, 10, 60), runs


def test_one_fifo_message_group_is_one_batch_at_a_time() -> None:
    # GIVEN 30 messages of one message group and batches that take 1 s each
    sim, tally = Sim(), Tally()
    queue, runs = _queue(sim, tally, 1.0)
    for index in range(30):
        queue.enqueue(f"m{index}", "market-data")

    # WHEN the event source mapping drains the queue
    sim.run()

    # THEN three batches of ten ran one after another: 3 s, never two at once
    assert [len(groups) for _, _, groups in runs] == [10, 10, 10]
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(runs))
    assert runs[-1][1] == pytest.approx(3.0)
    assert tally.peak_concurrency["fanout"] == 1


def test_message_groups_of_their_own_run_side_by_side() -> None:
    # GIVEN 10 messages in each of three groups
    sim, tally = Sim(), Tally()
    queue, runs = _queue(sim, tally, 1.0)
    for index in range(10):
        for group in ("A", "B", "C"):
            queue.enqueue(f"{group}{index}", group)

    # WHEN the mapping drains the queue
    sim.run()

    # THEN the three groups were in flight together: everything is done in one batch time
    assert tally.peak_concurrency["fanout"] == 3
    assert max(end for _, end, _ in runs) == pytest.approx(1.0)


def test_the_real_fan_out_delivers_every_event_to_every_subscriber() -> None:
    # GIVEN 1,500 subscribers of one stream (over the chunk size: the delivery queue is used too)
    scenario = Scenario(audience=1500, rate=2.0, symbols=1, events=3, profile="local")

    # WHEN the model runs the EventFanOut on three events
    outcome = run_scenario(scenario, horizon=120)

    # THEN each event reached all 1,500, once, in sequence order of its stream
    assert [event.delivered for event in outcome.events] == [1500, 1500, 1500]
    assert outcome.tally.peak_concurrency["delivery"] >= 1
    assert outcome.tally.failed_posts == 0


@pytest.mark.parametrize(("deadline", "fails"), [(None, True), (25.0, False)])
def test_throttled_posts_fail_after_their_attempts_unless_retried_to_a_deadline(deadline, fails) -> None:
    # GIVEN 2,000 posts, 400 in flight, an account quota of 1,000 calls/s and two attempts a post
    profile = replace(
        AWS, post=ms(10, 10), throttled_post=ms(1, 1), post_cpu_seconds=0.0, management_rate=1000.0, management_burst=1
    )
    settings = Settings(post_concurrency=400, max_post_attempts=2, **SETTINGS)
    sim, tally = Sim(seed=5), Tally()
    deliveries = Deliveries(tally, keep_latencies=False)
    deliveries.events["e"] = EventRecord("e", "S0", 0.0, 2000)
    gateway = SimGateway(sim, profile, ManagementApi(profile), deliveries, settings)
    gateway.throttle_deadline = deadline
    reports = []

    # WHEN one function posts them
    sim.spawn(lambda: reports.append(gateway.post_many([Post(f"c{i}", _frame("e")) for i in range(2000)])))
    sim.run()

    # THEN with two attempts most throttled posts are given up; retried to the deadline, all arrive (after >= 2 s)
    (report,) = reports
    assert bool(report.failed) is fails
    assert len(report.delivered) + len(report.failed) == 2000
    if not fails:
        assert deliveries.events["e"].last_delivery >= 2.0


def test_environments_initialised_beforehand_pay_no_cold_start() -> None:
    # GIVEN the AWS profile and 1,500 subscribers (the delivery queue is used), once from cold and once with the
    # fan-out's and the delivery functions' environments initialised beforehand (provisioned concurrency)
    cold = Scenario(audience=1500, rate=1.0, symbols=1, events=2)
    warm = replace(cold, warm_fanout=1, warm_delivery=8)

    # WHEN both run
    cold_outcome, warm_outcome = run_scenario(cold, horizon=120), run_scenario(warm, horizon=120)

    # THEN both deliver everything, the warm run starts no environment it had and its first event arrives sooner
    assert [e.delivered for e in warm_outcome.events] == [e.delivered for e in cold_outcome.events] == [1500, 1500]
    assert cold_outcome.tally.cold_starts >= 2 and warm_outcome.tally.cold_starts == 0
    first_cold, first_warm = (
        o.events[0].last_delivery - o.events[0].published_at for o in (cold_outcome, warm_outcome)
    )
    assert first_warm < first_cold


def test_the_local_profile_takes_the_checked_runs_own_query_and_cpu_figures() -> None:
    measured = {STACK_CPU_PER_1000_DELIVERIES: 0.5, AUDIENCE_QUERY_MS: 120.0}
    profile = local_profile(measured)
    assert profile.post_cpu_seconds == pytest.approx(0.0005)
    assert profile.query_seconds_per_item == pytest.approx(0.00012)
    assert (
        replace(profile, post_cpu_seconds=LOCAL.post_cpu_seconds, query_seconds_per_item=LOCAL.query_seconds_per_item)
        == LOCAL
    )
    # A slower gateway in the measured run means a later last delivery in the model.
    slow = run_scenario(Scenario(1000, 1.0, 1, 2, profile="local"), profile=profile)
    fast = run_scenario(Scenario(1000, 1.0, 1, 2, profile="local"), profile=replace(profile, post_cpu_seconds=0.0001))
    assert min(slow.times_to_last()) > max(fast.times_to_last())


def test_a_run_without_the_end_to_end_figures_cannot_calibrate_the_local_profile() -> None:
    with pytest.raises(ValueError, match=AUDIENCE_QUERY_MS):
        local_profile({STACK_CPU_PER_1000_DELIVERIES: 0.5})


def test_the_model_gives_the_same_figures_whatever_pythons_hash_seed() -> None:
    # GIVEN a scenario whose batches hold several message groups (the order groups go back to the queue
    # decides which is polled next)
    import subprocess
    import sys

    script = (
        "import logging\n"
        "from quanttrade_ws.observability import logger\n"
        "logger.setLevel(logging.CRITICAL)\n"
        "from bench.aws_model.scenario import Scenario, run_scenario\n"
        "outcome = run_scenario(Scenario(200, 40.0, 8, 60, design='symbol_group'))\n"
        "print([round(t, 9) for t in outcome.times_to_last()])\n"
    )

    # WHEN it runs in interpreters with different string hashes
    runs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        for seed in ("1", "2", "3")
    }

    # THEN every run times every event alike
    assert len(runs) == 1
