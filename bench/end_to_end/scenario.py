"""The end-to-end run: the stack and the ceiling in child processes, the same clients on both, one event at a time."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.child_process import ChildProcess
from bench.end_to_end.ceiling import plain_frame
from bench.end_to_end.clients import STREAM, SYMBOL, Arrivals, ClientPool
from bench.end_to_end.moto_query import subscriber_query_ms
from bench.end_to_end.rounds import measure, rate_ratio
from bench.end_to_end.samples_pattern import samples_broadcast
from bench.measurement import raise_fd_limit
from bench.stack_server import SECRET, events_client, stack_stats

AUDIENCES = (1000, 5000)
REPEATS = 20
WARMUPS = 2  # publishes per audience size before measuring: handler imports, pools, first Management API sockets


def _market_data_entry(attempt: int, bus: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    from quanttrade_ws import topology

    source = next(s.source for s in topology.SOURCES if s.detail_type == "MarketData")
    detail = {
        "symbol": SYMBOL,
        "price": round(100 + attempt * 0.01, 2),
        "bid": round(99.99 + attempt * 0.01, 2),
        "ask": round(100.01 + attempt * 0.01, 2),
        "volume": 1200.0,
        "change": 0.42,
        "change_percent": 0.42,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return {
        "Source": source,
        "DetailType": "MarketData",
        "Detail": json.dumps(detail),
        "EventBusName": bus,
    }


async def run_async(audiences: Sequence[int] = AUDIENCES, repeats: int = REPEATS) -> dict[str, Any]:
    from bench.machine import child_pids, cpu_seconds

    audiences = sorted(audiences)
    limit = raise_fd_limit()
    if limit < 2 * max(audiences) + 500:
        raise RuntimeError(f"open-file limit {limit} is too low for {max(audiences)} clients of each server")
    loop = asyncio.get_running_loop()
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    stack_options = {
        "connect_rate_per_second": None,  # the account quota would make connecting 5,000 take 10 s by itself
        "management_rate_per_second": 1e9,  # measure the service, not the emulated account quota
        "simulator": False,
        "sweep_interval": None,
        "idle_timeout": 3600.0,
    }
    with (
        ChildProcess("stack", stack_options) as stack,
        ChildProcess("plain", module="bench.end_to_end.ceiling") as plain,
    ):
        print(
            f"stack up (pid {stack.pid}) and plain server up (pid {plain.pid}) in {time.perf_counter() - started:.1f}s"
        )
        events = await loop.run_in_executor(None, events_client, stack.info["aws_endpoint_url"])
        service_arrivals, plain_arrivals = Arrivals(), Arrivals()
        service = ClientPool(stack.info["websocket_url"], service_arrivals, subscribe=True, token_secret=SECRET)
        ceiling = ClientPool(plain.info["websocket_url"] + "clients", plain_arrivals, subscribe=False)
        from websockets.asyncio.client import connect

        control = await connect(plain.info["websocket_url"] + "control", max_size=None, ping_interval=None)

        async def publish_service(attempt: int) -> tuple[str, float, float]:
            entry = _market_data_entry(attempt, stack.info["event_bus_name"])

            def put() -> tuple[str, float]:
                published_at = time.time()
                response = events.put_events(Entries=[entry])
                if response.get("FailedEntryCount"):
                    raise RuntimeError(f"PutEvents refused the event: {response['Entries'][0]}")
                return str(response["Entries"][0]["EventId"]), published_at

            cpu_at = time.process_time()
            event_id, published_at = await loop.run_in_executor(None, put)
            return event_id, published_at, cpu_at

        frame_size = 0

        async def publish_plain(attempt: int) -> tuple[str, float, float]:
            event_id = f"plain-{len(ceiling.connections)}-{attempt}"
            cpu_at = time.process_time()
            published_at = time.time()
            await control.send(json.dumps({"event_id": event_id, "size": frame_size}))
            return event_id, published_at, cpu_at

        samples_worker = ProcessPoolExecutor(max_workers=1)

        async def publish_samples(attempt: int) -> tuple[str, float, float]:
            event_id = f"samples-{attempt}-{time.monotonic_ns()}"
            frame = plain_frame(event_id, frame_size)
            cpu_at = time.process_time()
            started, _, _ = await loop.run_in_executor(
                samples_worker,
                samples_broadcast,
                stack.info["aws_endpoint_url"],
                stack.info["management_endpoint"],
                stack.info["connections_table"],
                frame,
            )
            return event_id, started, cpu_at

        try:
            for audience in audiences:
                stack_cpu_before = cpu_seconds(stack.pid) or 0.0
                already = len(service.connections)
                setup = await service.grow(audience)
                stack_cpu_setup = (cpu_seconds(stack.pid) or 0.0) - stack_cpu_before
                added = setup["clients"] - already
                print(
                    f"{added} more service clients ({setup['clients']} in all) connected and subscribed in "
                    f"{setup['seconds']}s ({added / max(setup['seconds'], 1e-9):.0f}/s; "
                    f"stack process CPU {stack_cpu_setup:.1f}s; "
                    f"refusals {setup['refusals']})",
                    flush=True,
                )
                if len(service.connections) < audience:
                    raise RuntimeError(f"only {len(service.connections)} of {audience} clients could subscribe")
                # Thousands of long-lived client objects: keep the collector from walking them mid-measurement.
                gc.collect()
                gc.freeze()
                stack_cpu_before = cpu_seconds(stack.pid) or 0.0
                moto_cpu_before = sum(cpu_seconds(pid) or 0.0 for pid in child_pids(stack.pid))
                measured = await measure(
                    service_arrivals, audience, repeats, publish_service, f"service {audience}", warmups=WARMUPS
                )
                stack_cpu = (cpu_seconds(stack.pid) or 0.0) - stack_cpu_before
                moto_cpu = sum(cpu_seconds(pid) or 0.0 for pid in child_pids(stack.pid)) - moto_cpu_before
                frame_size = measured.frame_bytes or 0
                service_figures = measured.summary()
                print(f"service  {audience}: {service_figures}", flush=True)

                await ceiling.grow(audience)
                plain_cpu_before = cpu_seconds(plain.pid) or 0.0
                plain_measured = await measure(
                    plain_arrivals, audience, repeats, publish_plain, f"plain {audience}", warmups=WARMUPS
                )
                plain_cpu = (cpu_seconds(plain.pid) or 0.0) - plain_cpu_before
                plain_figures = plain_measured.summary()
                print(f"ceiling  {audience}: {plain_figures}", flush=True)

                samples_measured = await measure(
                    service_arrivals,
                    audience,
                    max(2, repeats // 4),
                    publish_samples,
                    f"samples {audience}",
                    warmups=1,
                )
                samples_figures = samples_measured.summary()
                print(f"samples  {audience}: {samples_figures}", flush=True)

                query = await loop.run_in_executor(
                    None, subscriber_query_ms, stack.info["aws_endpoint_url"], stack.info["subscriptions_table"], STREAM
                )
                print(f"moto answers the {query['items']}-subscriber Query in {query['median_ms']} ms", flush=True)
                prefix = f"end_to_end_{audience}"
                ratio = rate_ratio(service_figures, plain_figures, digits=3)
                figures.update(
                    {
                        f"{prefix}_deliveries_per_second": service_figures["deliveries_per_second"],
                        f"{prefix}_latency_p50_ms": service_figures["latency_p50_ms"],
                        f"{prefix}_latency_p99_ms": service_figures["latency_p99_ms"],
                        f"{prefix}_latency_max_ms": service_figures["latency_max_ms"],
                        f"{prefix}_ceiling_deliveries_per_second": plain_figures["deliveries_per_second"],
                        f"{prefix}_ceiling_latency_p50_ms": plain_figures["latency_p50_ms"],
                        f"{prefix}_ceiling_latency_p99_ms": plain_figures["latency_p99_ms"],
                        f"{prefix}_ratio_to_ceiling": ratio,
                        f"{prefix}_samples_pattern_deliveries_per_second": samples_figures["deliveries_per_second"],
                        f"{prefix}_samples_pattern_latency_p50_ms": samples_figures["latency_p50_ms"],
                        f"{prefix}_samples_pattern_latency_p99_ms": samples_figures["latency_p99_ms"],
                        f"{prefix}_ratio_to_samples_pattern": rate_ratio(service_figures, samples_figures),
                        f"{prefix}_delivered": service_figures["delivered"],
                        f"{prefix}_expected": service_figures["expected"],
                        f"{prefix}_setup_seconds": setup["seconds"],
                        f"{prefix}_setup_new_clients": added,
                        f"{prefix}_frame_bytes": service_figures["frame_bytes"],
                        f"{prefix}_ceiling_frame_bytes": plain_figures["frame_bytes"],
                        f"{prefix}_stack_cpu_seconds_per_1000_deliveries": round(
                            1000 * stack_cpu / max(service_figures["delivered"], 1), 3
                        ),
                        f"{prefix}_moto_cpu_seconds_per_1000_deliveries": round(
                            1000 * moto_cpu / max(service_figures["delivered"], 1), 3
                        ),
                        f"{prefix}_ceiling_server_cpu_seconds_per_1000_deliveries": round(
                            1000 * plain_cpu / max(plain_figures["delivered"], 1), 3
                        ),
                        f"{prefix}_moto_subscriber_query_ms": query["median_ms"],
                        f"{prefix}_bench_cpu_share_service": service_figures["bench_process_cpu_share"],
                        f"{prefix}_bench_cpu_share_ceiling": plain_figures["bench_process_cpu_share"],
                    }
                )
            figures["end_to_end_service_clients_closed_early"] = service.closed_early
            figures["end_to_end_stack_stats"] = await loop.run_in_executor(None, stack_stats, stack.info["http_url"])
        finally:
            samples_worker.shutdown(cancel_futures=True)
            await control.close()
            await ceiling.close()
            await service.close()
    figures["end_to_end_repeats"] = repeats
    figures["end_to_end_seconds"] = round(time.perf_counter() - started, 1)
    return figures


def run(audiences: Sequence[int] = AUDIENCES, repeats: int = REPEATS) -> dict[str, Any]:
    return asyncio.run(run_async(audiences, repeats))
