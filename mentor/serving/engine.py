"""The serving engine: requests from many clients, batched. Requests that share a base model and
sampling settings are gathered while they keep arriving (a few milliseconds) and answered in one
`generate` call, each row with its own LoRA adapter (PEFT mixed-adapter batches; a batch of one
adapter runs it as the active one); text streams out token by token.

Generation is `mentor.serving.generate`, the path `mentor predict` takes too, on models from the
`ModelPool` (which loads and evicts them), so a server and `mentor predict` answer alike.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from mentor.serving.generate import GeneratedText, SamplingParams, eos_ids, generate_stream
from mentor.serving.pool import ModelPool, Servable, adapter_names
from mentor.serving.scoring import score_tokens
from mentor.serving.stop import apply_stop

log = logging.getLogger("mentor")
DONE = object()
MAX_WINDOWS = 8  # the longest a batch waits for company, in batch windows


@dataclass
class Ticket:
    """One request in the engine: its prompt, settings, and the events its client reads."""

    servable: Servable
    prompt: str
    params: SamplingParams
    max_input_tokens: int | None = None
    stream: bool = False
    # (token ids, k): score these tokens (`mentor.serving.scoring`), generate nothing; the answer is
    # one PromptScores. Scoring tickets batch only with each other.
    scoring: tuple[tuple[int, ...], int] | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    gone: threading.Event = field(default_factory=threading.Event)  # the client left: nobody reads the answer
    ready: threading.Event = field(default_factory=threading.Event)  # something came: a delta, the answer, an error
    _ids: dict = field(default_factory=dict)  # copy -> generated ids so far (streaming)
    _sent: dict = field(default_factory=dict)  # copy -> text already streamed

    @property
    def key(self) -> tuple:
        """Tickets of one key share a batch. The seed is not part of it: greedy decoding has no use
        for one, and a seeded sampled row draws from a generator of its own, so its answer does not
        depend on what else is in the batch (evaluation harnesses send a seed with every request)."""
        if self.scoring is not None:
            return self.servable.base, "scoring"
        return self.servable.base, dataclasses.replace(self.params, seed=None), self.max_input_tokens

    def result(self, timeout: float | None = None) -> list[GeneratedText]:
        """The finished completions, or a scoring ticket's PromptScores (raises what generating raised)."""
        while True:
            kind, *payload = self.events.get(timeout=timeout)
            if kind == "done":
                return payload[0]
            if kind == "error":
                raise payload[0]

    def deltas(self, timeout: float | None = None):
        """(copy, text delta) as text is generated, then ("done", completions)."""
        while True:
            kind, *payload = self.events.get(timeout=timeout)
            if kind == "delta":
                yield payload[0], payload[1]
            elif kind == "done":
                yield "done", payload[0]
                return
            else:
                raise payload[0]

    # -- called by the engine thread ------------------------------------------------------------
    def token(self, copy: int, token_id: int, tokenizer, eos_ids: set[int]) -> None:
        ids = self._ids.setdefault(copy, [])
        if ids and ids[-1] in eos_ids:
            return  # this copy ended; the batch goes on for others
        ids.append(token_id)
        text = apply_stop(tokenizer.decode(ids, skip_special_tokens=True), list(self.params.stop))
        text = text.rstrip("\ufffd")  # half a character: wait for the rest of its bytes
        held = max((len(s) - 1 for s in self.params.stop if s), default=0)  # a stop string may be starting
        safe = text[: max(len(text) - held, 0)] if held else text
        sent = self._sent.get(copy, "")
        if len(safe) > len(sent) and safe.startswith(sent):
            self._put("delta", copy, safe[len(sent):])
            self._sent[copy] = safe

    def finish(self, outputs: list[GeneratedText]) -> None:
        if self.stream:
            for copy, out in enumerate(outputs):
                sent = self._sent.get(copy, "")
                if out.text.startswith(sent) and len(out.text) > len(sent):
                    self._put("delta", copy, out.text[len(sent):])
        self._put("done", outputs)

    def fail(self, err: BaseException) -> None:
        self._put("error", err)

    def _put(self, *event) -> None:
        self.events.put(event)
        self.ready.set()


class Engine:
    """Batches requests onto the pool's models from one worker thread."""

    def __init__(self, pool: ModelPool, max_batch: int = 16, window_seconds: float = 0.010):
        self.pool, self.max_batch, self.window = pool, max_batch, window_seconds
        self._queue: queue.Queue = queue.Queue()
        self._held: deque[Ticket] = deque()  # taken from the queue but for another batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.requests = 0
        self.abandoned = 0  # requests whose clients left: skipped, or their batch cut short

    def submit(self, ticket: Ticket) -> Ticket:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mentor-engine", daemon=True)
                self._thread.start()
        self._queue.put(ticket)
        return ticket

    def close(self) -> None:
        self._queue.put(DONE)

    def _next(self, timeout: float | None) -> Ticket | object:
        if self._held:
            return self._held.popleft()
        return self._queue.get(timeout=timeout)

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is DONE:
                return
            # Gather while requests keep coming: each arrival gives the others one more window, up to
            # MAX_WINDOWS. Clients answered by the last batch come back within milliseconds of each
            # other, and one that misses a fixed window waits out a whole batch alone.
            now = time.monotonic()
            batch, deadline, cap = [first], now + self.window, now + self.window * MAX_WINDOWS
            skipped: list[Ticket] = []
            while len(batch) < self.max_batch:
                try:
                    nxt = self._next(max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if nxt is DONE:
                    self._queue.put(DONE)
                    break
                if nxt.key != first.key:
                    skipped.append(nxt)  # for a later batch; it does not keep this one waiting
                    continue
                batch.append(nxt)
                deadline = min(time.monotonic() + self.window, cap)
            self._held.extend(skipped)
            self._run(batch)

    def _score(self, batch: list[Ticket], loaded, names: list[str]) -> None:
        """Answer a batch of scoring tickets with one forward pass per `max_batch` rows (the pool's
        pins are released here, as `_run` does for generation)."""
        k = max(t.scoring[1] for t in batch)
        scores = score_tokens(loaded, [t.scoring[0] for t in batch], k, adapter_names(loaded, names),
                              batch_size=self.max_batch)
        self.pool.release([t.servable for t in batch])
        for ticket, s in zip(batch, scores):
            want = ticket.scoring[1]  # a batch asks for its largest k: each ticket keeps its own
            ticket.finish(dataclasses.replace(s, top_ids=[None if t is None else t[:want] for t in s.top_ids],
                                              top_logprobs=[None if t is None else t[:want] for t in s.top_logprobs]))

    def _run(self, batch: list[Ticket]) -> None:
        left = [t for t in batch if t.gone.is_set()]  # a client that left before its turn costs nothing
        batch = [t for t in batch if not t.gone.is_set()]
        self.abandoned += len(left)
        if not batch:
            return
        self.batches += 1
        self.requests += len(batch)
        log.debug("serving: a batch of %d (%d waiting)", len(batch), self._queue.qsize() + len(self._held))
        servables = [t.servable for t in batch]
        try:
            loaded, names = self.pool.acquire(servables)
            if batch[0].scoring is not None:
                self._score(batch, loaded, names)
                return
            tok = loaded.tokenizer
            eos = eos_ids(tok, loaded.model)
            streaming = any(t.stream for t in batch)
            rows_seen: dict[int, int] = {}

            def on_tokens(indices: list[int], ids: list[int]) -> None:
                rows_seen.clear()
                for index, token_id in zip(indices, ids):
                    copy = rows_seen.get(index, 0)
                    rows_seen[index] = copy + 1
                    if batch[index].stream:
                        batch[index].token(copy, token_id, tok, eos)

            first = batch[0]
            params = dataclasses.replace(first.params, seed=None)
            seeds = None if params.greedy else [t.params.seed for t in batch]
            outputs = dict(generate_stream(loaded, [t.prompt for t in batch], params, batch_size=len(batch),
                                           max_input_tokens=first.max_input_tokens,
                                           adapter_names=adapter_names(loaded, names),
                                           on_tokens=on_tokens if streaming else None,
                                           abandoned=lambda: all(t.gone.is_set() for t in batch), seeds=seeds))
            self.pool.release(servables)
            if all(t.gone.is_set() for t in batch):
                self.abandoned += len(batch)  # cut short: nobody was reading any more
            for index, ticket in enumerate(batch):
                ticket.finish(outputs[index])
        except Exception as err:  # noqa: BLE001 - every waiting client hears of it
            self.pool.release(servables)
            # one bad request (an adapter that cannot load) must not fail the others: those that have
            # streamed nothing yet are answered one by one (a sampled answer begun cannot be redone)
            again = [t for t in batch if not t._sent] if len(batch) > 1 else []
            if again:
                log.warning("serving: a batch of %d failed (%s); answering its requests one by one", len(batch), err)
            else:
                log.exception("serving: a request failed")
            for ticket in batch:
                if ticket in again:
                    ticket._ids.clear()
                    self._run([ticket])
                else:
                    ticket.fail(err)
