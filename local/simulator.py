"""A market simulator: the upstream services of a trading desk, publishing to the stack's event bus.

Market data ticks for a handful of symbols (a geometric random walk with a
bid/ask spread and volumes), and now and then a model prediction, an alert,
a market regime change, strategy performance metrics and system status: each
with the source and detail-type the topology declares, through boto3's
`events.put_events`, up to 10 entries per call as the API allows. It talks to
whatever endpoint its client has: moto locally, or a deployed bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from local.background import BackgroundLoop
from quanttrade_ws import topology

logger = logging.getLogger("quanttrade.local.simulator")

SYMBOLS: dict[str, float] = {"AAPL": 189.5, "MSFT": 415.2, "GOOGL": 152.8, "AMZN": 178.3, "TSLA": 242.6, "NVDA": 875.4}
SOURCE_OF: dict[str, str] = {source.detail_type: source.source for source in topology.SOURCES}
MAX_ENTRIES_PER_CALL = 10  # PutEvents' limit

REGIMES = ("bull_quiet", "bull_volatile", "bear_quiet", "bear_volatile", "sideways", "crisis")
MODELS = ("lstm-v3", "xgb-momentum-2", "transformer-ts-1")
HORIZONS = ("5m", "15m", "1h", "1d")
STRATEGIES = ("momentum", "mean_reversion", "stat_arb")
SERVICES = ("market-data-feed", "prediction-engine", "risk-engine", "order-router")
ALERT_KINDS: tuple[tuple[str, str, str], ...] = (
    # (alert_type, severity, message template)
    ("price_move", "medium", "{symbol} moved {move:+.2f}% in the last minute"),
    ("volume_spike", "low", "{symbol} volume {ratio:.1f}x its recent average"),
    ("volatility", "high", "{symbol} realised volatility above its 95th percentile"),
    ("risk_limit", "critical", "Desk exposure to {symbol} above its risk limit"),
    ("spread_widening", "medium", "{symbol} spread widened to {spread:.1f} bps"),
)


def iso_now(now: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Instrument:
    symbol: str
    price: float
    open_price: float
    volatility: float  # annualised
    last_prices: list[float] = field(default_factory=list)


class MarketModel:
    """The random part, separate from publishing so it can be driven (and tested) without a bus.

    Prices follow a geometric random walk with each instrument's volatility,
    scaled to real time so a tick-by-tick chart looks like a market, not noise.
    """

    TRADING_SECONDS_PER_YEAR = 252 * 6.5 * 3600

    def __init__(self, symbols: dict[str, float] | None = None, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.instruments = {
            symbol: _Instrument(symbol, price, price, volatility=self.rng.uniform(0.25, 0.6))
            for symbol, price in (symbols or SYMBOLS).items()
        }
        self.regime = self.rng.choice(REGIMES)

    def tick(self, symbol: str, elapsed: float, now: float | None = None) -> dict[str, Any]:
        instrument = self.instruments[symbol]
        # Compressed time (x50) so prices visibly move on a dashboard within seconds.
        scale = instrument.volatility * math.sqrt(max(elapsed, 1e-3) * 50 / self.TRADING_SECONDS_PER_YEAR)
        instrument.price = max(0.01, instrument.price * math.exp(self.rng.gauss(0, 1) * scale))
        instrument.last_prices = [*instrument.last_prices[-59:], instrument.price]
        spread = instrument.price * self.rng.uniform(0.5, 4) / 10_000  # 0.5 to 4 basis points
        change = instrument.price - instrument.open_price
        return {
            "symbol": symbol,
            "price": round(instrument.price, 4),
            "bid": round(instrument.price - spread / 2, 4),
            "ask": round(instrument.price + spread / 2, 4),
            "volume": float(self.rng.randint(1, 50) * 100),
            "change": round(change, 4),
            "change_percent": round(change / instrument.open_price * 100, 4),
            "timestamp": iso_now(now),
        }

    def prediction(self, now: float | None = None) -> dict[str, Any]:
        instrument = self.rng.choice(list(self.instruments.values()))
        direction = self.rng.choice(("up", "down", "flat"))
        drift = {"up": 1, "down": -1, "flat": 0}[direction] * self.rng.uniform(0.001, 0.02)
        return {
            "symbol": instrument.symbol,
            "direction": direction,
            "confidence": round(self.rng.uniform(0.5, 0.97), 3),
            "horizon": self.rng.choice(HORIZONS),
            "predicted_price": round(instrument.price * (1 + drift), 4),
            "model": self.rng.choice(MODELS),
            "timestamp": iso_now(now),
        }

    def alert(self) -> dict[str, Any]:
        instrument = self.rng.choice(list(self.instruments.values()))
        alert_type, severity, template = self.rng.choices(ALERT_KINDS, weights=(5, 5, 2, 1, 3))[0]
        first = instrument.last_prices[0] if instrument.last_prices else instrument.open_price
        message = template.format(
            symbol=instrument.symbol,
            move=(instrument.price / first - 1) * 100,
            ratio=self.rng.uniform(2, 6),
            spread=self.rng.uniform(5, 25),
        )
        return {"alert_type": alert_type, "severity": severity, "message": message, "symbol": instrument.symbol}

    def regime_change(self) -> dict[str, Any]:
        self.regime = self.rng.choice([r for r in REGIMES if r != self.regime])
        return {"market": "US", "regime": self.regime, "confidence": round(self.rng.uniform(0.55, 0.95), 3)}

    def performance(self) -> dict[str, Any]:
        return {
            "strategy": self.rng.choice(STRATEGIES),
            "metrics": {
                "pnl": round(self.rng.gauss(2_500, 8_000), 2),
                "sharpe": round(self.rng.uniform(0.4, 2.8), 3),
                "max_drawdown": round(-self.rng.uniform(0.01, 0.12), 4),
                "win_rate": round(self.rng.uniform(0.42, 0.61), 3),
                "trades": self.rng.randint(20, 400),
            },
        }

    def system_status(self) -> dict[str, Any]:
        status = self.rng.choices(("healthy", "degraded", "maintenance"), weights=(90, 8, 2))[0]
        service = self.rng.choice(SERVICES)
        message = {"healthy": "All checks passing", "degraded": "Elevated latency", "maintenance": "Planned work"}
        return {"service": service, "status": status, "message": message[status]}


@dataclass(frozen=True)
class SimulatorRates:
    """Events per second of each kind. Market data is spread over the symbols in turn."""

    market_data: float = 6.0
    prediction: float = 0.2
    alert: float = 0.1
    market_regime: float = 1 / 60
    performance: float = 0.2
    system_status: float = 0.1

    def scaled(self, factor: float) -> SimulatorRates:
        return SimulatorRates(**{name: value * factor for name, value in self.__dict__.items()})


class MarketSimulator(BackgroundLoop):
    """Publishes the model's events to the bus at the configured rates until stopped.

    `events_factory` builds the boto3 EventBridge client (called in the
    publishing thread); `rate` is market data ticks per second, with the other
    kinds scaled in proportion to the defaults.
    """

    def __init__(
        self,
        events_factory: Callable[[], Any],
        *,
        event_bus_name: str,
        rate: float = 6.0,
        symbols: dict[str, float] | None = None,
        seed: int | None = None,
        period: float = 0.25,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        super().__init__()
        self.rates = SimulatorRates().scaled(rate / SimulatorRates().market_data)
        self.model = MarketModel(symbols, seed)
        self.event_bus_name = event_bus_name
        self.period = period
        self.published: Counter[str] = Counter()
        self.failed = 0
        self._events_factory = events_factory
        self._events: Any = None
        self._tick_credit = 0.0
        self._symbol_turn = 0

    # ------------------------------------------------------------------ what to publish

    def entries_for(self, elapsed: float, now: float | None = None) -> list[dict[str, Any]]:
        """PutEvents entries for `elapsed` seconds of market activity."""
        entries: list[dict[str, Any]] = []
        self._tick_credit += self.rates.market_data * elapsed
        symbols = list(self.model.instruments)
        ticks = int(self._tick_credit)
        self._tick_credit -= ticks
        for _ in range(ticks):
            symbol = symbols[self._symbol_turn % len(symbols)]
            self._symbol_turn += 1
            # Each symbol ticks once per round of all symbols: that is the time its price had to move.
            between_ticks = len(symbols) / self.rates.market_data
            entries.append(self.entry("MarketData", self.model.tick(symbol, between_ticks, now)))
        makers: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
            "prediction": ("Prediction", lambda: self.model.prediction(now)),
            "alert": ("Alert", self.model.alert),
            "market_regime": ("MarketRegime", self.model.regime_change),
            "performance": ("Performance", self.model.performance),
            "system_status": ("SystemStatus", self.model.system_status),
        }
        for name, (detail_type, make) in makers.items():
            # Poisson arrivals (at most one per period), so rare kinds do not arrive on a metronome.
            if self.model.rng.random() < 1 - math.exp(-getattr(self.rates, name) * elapsed):
                entries.append(self.entry(detail_type, make()))
        return entries

    def entry(self, detail_type: str, detail: dict[str, Any]) -> dict[str, Any]:
        return {
            "Source": SOURCE_OF[detail_type],
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
            "EventBusName": self.event_bus_name,
        }

    def publish(self, entries: list[dict[str, Any]]) -> int:
        """Put the entries, 10 per call; returns how many the bus accepted (blocking)."""
        if self._events is None:
            self._events = self._events_factory()
        accepted = 0
        for start in range(0, len(entries), MAX_ENTRIES_PER_CALL):
            chunk = entries[start : start + MAX_ENTRIES_PER_CALL]
            try:
                response = self._events.put_events(Entries=chunk)
            except Exception as error:
                self.failed += len(chunk)
                logger.warning("PutEvents failed: %s", error)
                continue
            for entry, result in zip(chunk, response.get("Entries", []), strict=False):
                if result.get("EventId"):
                    accepted += 1
                    self.published[entry["DetailType"]] += 1
                else:
                    self.failed += 1
                    logger.warning("PutEvents refused an entry: %s", result.get("ErrorMessage"))
        return accepted

    # ------------------------------------------------------------------ running

    task_name = "market-simulator"

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop publishing; a PutEvents still waiting on a saturated endpoint after `timeout` is left behind
        (its thread ends when the endpoint answers or goes away), so stopping the stack never waits on it."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=timeout)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            entries = self.entries_for(now - last)
            last = now
            if entries:
                await loop.run_in_executor(None, self.publish, entries)
            # Sleep to the next period boundary (publishing time included), waking at once on stop.
            delay = max(0.0, self.period - (time.monotonic() - now))
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                continue
