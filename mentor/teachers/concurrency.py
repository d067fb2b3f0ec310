"""How many teacher requests to keep in flight, adapted to what the server can take.

Why: a local teacher (`transformers serve`, llama.cpp, Ollama on a CPU) answers one request at a
time. Every request beyond the one being answered waits in the server's queue, so more in flight
adds latency and no throughput, until waits pass the client's timeout, requests are retried and
the server computes answers nobody waits for. A hosted API or a batching server (vLLM) is the
opposite: more in flight is more answers a second. The client cannot tell which it talks to, so
it measures, with the gradient rule of Netflix's concurrency-limits (after TCP Vegas) and TCP's
multiplicative decrease on overload:

- It starts at 1 request in flight: the first answer, alone on the server, shows the no-load time.
- An answer tells how long it waited in the server's queue before its first token: its time to
  first token minus the shortest seen (the no-load time). Unstreamed answers have no first token;
  their whole latency stands in for it (plain Vegas, coarser: answer lengths vary).
  `gradient = (latency - wait) / latency`, clamped to [1/2, 1] so one odd answer cannot collapse
  the limit; waits under `noise` seconds (scheduling, network jitter) count as none.
- The target is `limit * gradient + 1`. A server that queues (latency grows with the in-flight
  count, gradient ~ 1/limit) settles at 2: one request answered while the next waits, so the
  server never idles between requests (now and then 3, when network and parsing take a good part
  of a request's time). A server that takes c requests at once settles near c + 1; one that never
  queues (gradient ~ 1) grows to the user's maximum.
- The limit moves halfway to the target on each answer, and grows only from answers to requests
  sent while every slot was taken (a run's last few prompts prove nothing about the server).
- A timeout, 408, 429, 503 or 504 halves the limit, once per round: a signal from a request sent
  before the last decrease was already answered by it.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class SentRequest:
    """What the limiter knew when a request was sent."""

    sent: float  # time.monotonic()
    in_flight: int  # slots taken, this request's included
    round: int  # decreases so far


class FixedLimit:
    """A constant number of requests in flight (`concurrency` as given, the behaviour before
    adaptation; kept for comparison and for servers whose capacity is known)."""

    def __init__(self, maximum: int):
        if maximum < 1:
            raise ValueError(f"at least 1 request must be allowed in flight, got {maximum}")
        self.maximum = maximum
        self.round = 0

    @property
    def limit(self) -> int:
        return self.maximum

    def on_answer(self, ticket: SentRequest, latency: float, first_token: float | None = None) -> None:
        """An answer came back `latency` seconds after sending, its first token after `first_token`."""

    def on_overload(self, ticket: SentRequest) -> None:
        """The request timed out or the server said it is overloaded (408, 429, 503, 504)."""


class AdaptiveLimit(FixedLimit):
    """Requests in flight from `initial` up to `maximum`, set by queueing delay and overload (see
    the module docstring)."""

    def __init__(self, maximum: int, initial: int = 1, noise: float = 0.05):
        super().__init__(maximum)
        self.value = float(min(max(1, initial), maximum))
        self.noise = noise
        self.no_load: float | None = None  # shortest time to first token seen

    @property
    def limit(self) -> int:
        return min(self.maximum, max(1, math.floor(self.value + 0.5)))

    def on_answer(self, ticket: SentRequest, latency: float, first_token: float | None = None) -> None:
        first = latency if first_token is None else min(first_token, latency)
        if latency <= 0:
            return
        self.no_load = first if self.no_load is None else min(self.no_load, first)
        wait = first - self.no_load
        wait = 0.0 if wait < self.noise else wait
        gradient = min(1.0, max(0.5, (latency - wait) / latency))
        target = self.value * gradient + 1
        if target > self.value and ticket.in_flight < self.limit:
            return  # the limit was not all used when this was sent: no evidence that more would help
        self.value = min(float(self.maximum), max(1.0, (self.value + target) / 2))

    def on_overload(self, ticket: SentRequest) -> None:
        if ticket.round < self.round:
            return  # sent before the last decrease, which already answered this congestion
        self.round += 1
        self.value = max(1.0, self.value / 2)


class Slots:
    """At most `limit.limit` requests at once, for asyncio tasks; the limit may change any time.
    A freed slot wakes as many waiters as may now go, not all of them (a run queues one task per
    prompt: waking every one on every answer would cost time growing with the square of the run)."""

    def __init__(self, limit: FixedLimit):
        self.limit = limit
        self.in_flight = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self):
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit.limit)
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify(max(1, self.limit.limit - self.in_flight))  # the limit may have grown

    def ticket(self) -> SentRequest:
        """Taken by a slot holder as it sends a request."""
        return SentRequest(time.monotonic(), self.in_flight, self.limit.round)
