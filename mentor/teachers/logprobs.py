"""Log-prob teachers: a teacher's top-k log-probs at every scored position of given tokens.

What logit distillation needs from a teacher is not its text but its next-token distributions on
tokens it is given (the data's outputs, or a student's own samples). The interface:

    teacher = build_logprob_teacher("openai:MODEL@http://host:8000/v1", tokenizer="STUDENT_REF")
    [scored] = teacher.score([token_ids], starts=[prompt_length], top_k=64)
    scored.ids             # (P, k) int64: the teacher's k most likely next tokens, most likely first
    scored.logprobs        # (P, k) float32: their log-probs (temperature 1)
    scored.token_logprobs  # (P,) float32: the log-prob of the token that actually follows
    teacher.score_texts(["prompt"], [" continuation"], top_k=64)  # the same, tokenized here

Row i is position `start + i`: the distribution over token `start + i` given the tokens before it
(so `start >= 1`, and P = len(tokens) - start). Token ids are the teacher's tokenizer's, which for
white-box distillation is the student's (the same tokenizer is required).

Two teachers, one interface (`LogprobTeacher`):
- in process (`hf:REF`, or a plain model reference): one forward pass, `topk` of the log-softmax
  (`mentor.serving.scoring`, the code mentor's server answers with);
- served (`openai:MODEL@URL`): `POST /completions` with the prompt as token ids, `max_tokens` 0 and
  `echo`, asking either vLLM's `prompt_logprobs: k` (top-k by token id; vLLM and mentor's own
  server) or OpenAI's legacy `logprobs: k` (top-k by token text). The first request finds out
  which the server answers (`protocol="auto"`) and checks that it tokenizes a text as the local
  tokenizer does; a server that answers neither (`transformers serve` ignores both) is refused in
  one line. vLLM caps k at its `--max-logprobs` (20 by default); mentor's server at 256.

Token texts to ids (legacy `logprobs`, where a server names tokens by their text): 'token_id:N'
(vLLM's `return_tokens_as_token_ids`) is N; the actual token of a position is the id that was
sent when the text is that id's decoded text or vocabulary entry; any other text is the one id
whose decoded text it is, else the vocabulary entry spelled so. A text several ids decode to
(a lone byte of a multi-byte character decodes to U+FFFD for each of them) names no single id:
it is dropped, and its probability falls to the rest of the distribution. Rows with fewer than k
entries (dropped texts, a server that sent fewer) are filled with unused ids at log-prob
`FILL_LOGPROB` (probability 0 in float32), so every row has k columns.

Every answer is cached like every teacher call (`Teacher.complete`: the SQLite cache keyed by
teacher, request and parameters; concurrency, adaptive limits and retries are `OpenAITeacher`'s):
a request is the JSON of (tokens, start, k), the answer its arrays, stored base64-encoded.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from mentor.errors import MentorError
from mentor.teachers.base import Completion, GenerationParams, OnAnswer, Teacher
from mentor.teachers.cache import TeacherCache
from mentor.teachers.hf_local import ROUTES as HF_ROUTES
from mentor.teachers.openai_compat import DEFAULT_TIMEOUT, OpenAITeacher, RetryPolicy, _detail, _timeout, parse_spec
from mentor.teachers.openai_compat import ROUTES as OPENAI_ROUTES

log = logging.getLogger("mentor")

__all__ = ["FILL_LOGPROB", "LogprobTeacher", "HFLogprobTeacher", "ServedLogprobTeacher", "TokenLogprobs",
           "TokenMap", "build_logprob_teacher", "is_served"]

FILL_LOGPROB = -1e4  # a filled column: exp() is 0 in float32, and 0 * log() stays finite in every divergence
PROTOCOLS = ("auto", "prompt_logprobs", "echo")
# part of every cache key: scoring is deterministic, there is nothing to sample
SCORING = GenerationParams(max_new_tokens=1, temperature=0.0)


def is_served(spec: str | None) -> bool:
    """Whether a teacher spec names a server (`openai:MODEL@URL`) rather than a model to load."""
    return bool(spec) and spec.partition(":")[0] in OPENAI_ROUTES


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _unb64(text: str, dtype, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape).copy()


@dataclass(frozen=True)
class TokenLogprobs:
    """One sequence's scored positions: row i is position start + i (see the module docstring)."""

    ids: np.ndarray  # (P, k) int64
    logprobs: np.ndarray  # (P, k) float32
    token_logprobs: np.ndarray  # (P,) float32

    def to_json(self) -> str:
        p, k = self.ids.shape
        return json.dumps({"positions": p, "k": k, "ids": _b64(self.ids.astype(np.int32)),
                           "logprobs": _b64(self.logprobs.astype(np.float32)),
                           "token_logprobs": _b64(self.token_logprobs.astype(np.float32))})

    @classmethod
    def from_json(cls, text: str) -> TokenLogprobs:
        d = json.loads(text)
        p, k = d["positions"], d["k"]
        return cls(_unb64(d["ids"], np.int32, (p, k)).astype(np.int64), _unb64(d["logprobs"], np.float32, (p, k)),
                   _unb64(d["token_logprobs"], np.float32, (p,)))

    @classmethod
    def from_rows(cls, rows: list[list[tuple[int, float]]], actual: list[float], k: int) -> TokenLogprobs:
        """From per-position (id, log-prob) entries, most likely first, filled up to k columns."""
        ids = np.zeros((len(rows), k), dtype=np.int64)
        values = np.full((len(rows), k), FILL_LOGPROB, dtype=np.float32)
        for r, entries in enumerate(rows):
            entries = entries[:k]
            taken = {i for i, _ in entries}
            fill = (i for i in range(len(taken) + k + 1) if i not in taken)
            for c in range(k):
                if c < len(entries):
                    ids[r, c], values[r, c] = entries[c]
                else:
                    ids[r, c] = next(fill)
        return cls(ids, values, np.asarray(actual, dtype=np.float32))


def _request(tokens: Sequence[int], start: int, k: int) -> str:
    return json.dumps({"tokens": [int(t) for t in tokens], "start": int(start), "top_k": int(k)},
                      separators=(",", ":"))


def _parse_request(key: str) -> tuple[list[int], int, int]:
    d = json.loads(key)
    return d["tokens"], d["start"], d["top_k"]


class LogprobTeacher(Teacher):
    """Scores given tokens; subclasses implement `_answer` for requests not yet cached (each a
    `_request` key) and `tokenizer`."""

    @property
    def tokenizer(self):
        raise NotImplementedError

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], top_k: int = 64) -> list[TokenLogprobs]:
        """The teacher's top-`top_k` log-probs at positions starts[i]: of sequences[i], in order."""
        if len(sequences) != len(starts):
            raise MentorError(f"{len(sequences)} sequences but {len(starts)} starts")
        if top_k < 1:
            raise MentorError(f"top_k must be at least 1, got {top_k}")
        for n, (seq, start) in enumerate(zip(sequences, starts)):
            if not 1 <= start < len(seq):
                raise MentorError(f"sequence {n}: the scored part must start after the first token and before the "
                                  f"end (1 <= start < {len(seq)}), got start {start}")
        keys = [_request(seq, start, top_k) for seq, start in zip(sequences, starts)]
        return [TokenLogprobs.from_json(c.text) for c in self.complete(keys, SCORING)]

    def score_texts(self, prompts: Sequence[str], continuations: Sequence[str], top_k: int = 64) -> list[TokenLogprobs]:
        """The continuations scored after their prompts: the prompt tokenized as a causal model is fed
        it (its BOS), the continuation appended without special tokens, the scored part its tokens."""
        from mentor.serving.scoring import encode_text

        tok = self.tokenizer
        heads = [encode_text(tok, p) for p in prompts]
        tails = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
        return self.score([h + t for h, t in zip(heads, tails)], [len(h) for h in heads], top_k)


class HFLogprobTeacher(LogprobTeacher):
    """In process: the model loaded here on first need, one forward pass per batch."""

    def __init__(self, ref: str, cache: TeacherCache | None = None, batch_size: int = 8, progress: bool | None = None,
                 bf16: bool = False):
        from mentor.serving.generate import model_fingerprint  # imported late: it pulls in torch

        super().__init__(f"logprobs:hf:{ref}{model_fingerprint(ref)}", cache=cache, progress=progress)
        self.ref, self.batch_size, self.bf16 = ref, max(1, batch_size), bf16
        self._loaded = None

    @property
    def loaded(self):
        if self._loaded is None:
            import torch

            from mentor.models import load_model

            self._loaded = load_model(self.ref, dtype=torch.bfloat16 if self.bf16 else torch.float32)
            self._loaded.model.eval()
        return self._loaded

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def _answer(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        from mentor.serving.scoring import score_tokens

        if self.loaded.is_seq2seq:
            raise MentorError(f"log-prob teacher {self.ref}: scoring given tokens is for causal models")
        requests = [_parse_request(p) for p in prompts]
        for b in range(0, len(requests), self.batch_size):
            chunk = requests[b : b + self.batch_size]
            k = max(r[2] for r in chunk)
            scores = score_tokens(self.loaded, [r[0] for r in chunk], k, batch_size=self.batch_size)
            for key, (tokens, start, want), s in zip(prompts[b : b + self.batch_size], chunk, scores):
                self.stats.add(calls=1)
                rows = [list(zip(s.top_ids[j][:want], s.top_logprobs[j][:want])) for j in range(start, len(tokens))]
                scored = TokenLogprobs.from_rows(rows, s.token_logprobs[start:], want)
                on_answer(key, [Completion(scored.to_json(), len(tokens), 0, finish_reason="length")])
        return {}


class TokenMap:
    """Token texts a server sent back to the ids they name (the rule is in the module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._decoded: dict[str, int | None] | None = None
        self._vocab: dict[str, int] | None = None

    def _tables(self) -> tuple[dict[str, int | None], dict[str, int]]:
        if self._decoded is None:
            decoded: dict[str, int | None] = {}
            for i in range(len(self.tokenizer)):
                text = self.tokenizer.decode([i])
                decoded[text] = i if text not in decoded else None  # None: several ids decode to it
            self._decoded, self._vocab = decoded, self.tokenizer.get_vocab()
        return self._decoded, self._vocab

    def names(self, text: str, token_id: int) -> bool:
        """Whether a server's text for a token names this id."""
        return text in (f"token_id:{token_id}", self.tokenizer.decode([token_id]),
                        self.tokenizer.convert_ids_to_tokens(token_id))

    def id_of(self, text: str, actual: int | None = None) -> int | None:
        """The id a token text names, or None when it names none or several."""
        if text.startswith("token_id:") and text[9:].isdigit():
            return int(text[9:])
        if actual is not None and self.names(text, actual):
            return actual
        decoded, vocab = self._tables()
        if text in decoded:
            return decoded[text]
        return vocab.get(text)


class ServedLogprobTeacher(LogprobTeacher, OpenAITeacher):
    """Log-probs from an OpenAI-compatible server's completions route (see the module docstring):
    concurrent, retried and cached as `OpenAITeacher` is; `tokenizer` is the teacher's tokenizer (a
    tokenizer or a model reference whose tokenizer it is), used to check the server's and to read
    token texts."""

    def __init__(self, model: str, base_url: str, tokenizer, protocol: str = "auto", **kwargs):
        if protocol not in PROTOCOLS:
            raise MentorError(f"unknown log-prob protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        kwargs["stream"] = False  # a score is one JSON body: nothing to stream
        OpenAITeacher.__init__(self, model, base_url, route="completions", **kwargs)
        self.identity = f"logprobs:{model}@{self.base_url}"
        self.protocol = protocol
        self.checked = False
        self._tokenizer = tokenizer
        self._map: TokenMap | None = None
        self.dropped = 0  # top-k texts that named no single id

    @property
    def tokenizer(self):
        if isinstance(self._tokenizer, str):
            from mentor.models import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer)
        return self._tokenizer

    @property
    def token_map(self) -> TokenMap:
        if self._map is None:
            self._map = TokenMap(self.tokenizer)
        return self._map

    # -- the first request: which protocol, and the same tokenizer ------------------------------
    def check(self, text: str = "The teacher scores these tokens: 12 + 30 = 42.") -> str:
        """Find the protocol the server answers and check that it tokenizes `text` as the local
        tokenizer does; MentorError in one line if it scores no given tokens or tokenizes otherwise."""
        headers = {"Authorization": f"Bearer {key}"} if (key := self._api_key()) else {}
        base = {"model": self.model, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
        tries = [("prompt_logprobs", {**base, "prompt_logprobs": 1}), ("echo", base)]
        if self.protocol != "auto":
            tries = [t for t in tries if t[0] == self.protocol]
        answers = []
        with httpx.Client(timeout=_timeout(self.timeout), headers=headers) as client:
            for protocol, body in tries:
                self.stats.add(calls=1)
                try:
                    resp = client.post(self.url, json=body)
                except httpx.HTTPError as err:
                    raise MentorError(f"log-prob teacher {self.url}: cannot reach the server ({type(err).__name__}: "
                                      f"{err})") from None
                if resp.status_code in (401, 403, 404):
                    raise self._fatal(resp)
                choice = _first_choice(resp)
                if choice is not None and (protocol == "echo" or isinstance(choice.get("prompt_logprobs"), list)):
                    tokens = (choice.get("logprobs") or {}).get("tokens") if isinstance(choice.get("logprobs"), dict) else None
                    if protocol == "echo" and not tokens:
                        answers.append("HTTP 200 without a logprobs object")
                        continue
                    self._check_tokens(text, tokens)
                    self.protocol, self.checked = protocol, True
                    log.info(f"log-prob teacher {self.identity}: the server answers {protocol}")
                    return protocol
                answers.append(f"HTTP {resp.status_code}" + (f": {_detail(resp)}" if resp.status_code != 200 else
                                                              " without prompt_logprobs"))
        raise MentorError(f"{self.url} (model '{self.model}') does not return log-probabilities of given tokens "
                          f"(asked for vLLM's prompt_logprobs and for echo with logprobs and max_tokens 0; it "
                          f"answered {'; '.join(answers)}); serve the teacher with vLLM or `mentor serve`")

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env)

    def _check_tokens(self, text: str, tokens: list | None) -> None:
        """The server's tokens of `text` are the local tokenizer's (a BOS one side adds aside)."""
        if not tokens:
            return  # prompt_logprobs without the echoed tokens: the ids are checked as they come
        from mentor.serving.scoring import encode_text

        local = encode_text(self.tokenizer, text)
        served = list(tokens)
        if len(served) == len(local) + 1:
            served = served[1:]
        elif len(local) == len(served) + 1:
            local = local[1:]
        same = len(served) == len(local) and all(self.token_map.names(s, i) for s, i in zip(served, local))
        if not same:
            raise MentorError(f"the served teacher {self.identity} tokenizes differently from the student's tokenizer "
                              f"({len(served)} vs {len(local)} tokens for {text!r}); logit distillation from a "
                              "served teacher needs the same tokenizer for now")

    # -- scoring requests, through OpenAITeacher's concurrency, retries and cache ----------------
    def _answer(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        if not self.checked:
            tokens, _, _ = _parse_request(prompts[0])
            self.check(self.tokenizer.decode(tokens, skip_special_tokens=True) or "a")
        failed = OpenAITeacher._answer(self, prompts, params, on_answer)
        if self.dropped:
            log.warning(f"log-prob teacher {self.identity}: {self.dropped} top-k token texts named no single token id "
                        "(several ids decode to them) and were left out; their probability counts as the rest")
            self.dropped = 0
        return failed

    def _body(self, prompt: str, params: GenerationParams) -> dict:
        tokens, start, k = _parse_request(prompt)
        body = {"model": self.model, "prompt": tokens, "max_tokens": 0, "echo": True, "temperature": 0}
        body["prompt_logprobs" if self.protocol == "prompt_logprobs" else "logprobs"] = k
        return {"body": body, "start": start, "k": k}  # `_send` sends the body and reads the rest

    async def _send(self, client: httpx.AsyncClient, request: dict, params: GenerationParams, start: float,
                    read_timeout: float):
        resp = await client.post(self.url, json=request["body"], timeout=_timeout(read_timeout))
        if resp.status_code != 200:
            return resp, None, None
        return resp, [self._parse_scores(resp, request["body"]["prompt"], request["start"], request["k"])], None

    def _parse_scores(self, resp: httpx.Response, tokens: list[int], start: int, k: int) -> Completion:
        """The scored rows of a 200 answer; ValueError if it is not what the protocol promises."""
        try:
            choice = resp.json()["choices"][0]
            if self.protocol == "prompt_logprobs":
                rows, actual = self._from_prompt_logprobs(choice["prompt_logprobs"], tokens, start)
            else:
                rows, actual = self._from_echo(choice["logprobs"], tokens, start)
        except (KeyError, TypeError, AttributeError, IndexError) as err:  # (JSONDecodeError is a ValueError)
            raise ValueError(f"unexpected JSON shape ({type(err).__name__}: {err})") from err
        scored = TokenLogprobs.from_rows(rows, actual, k)
        return Completion(scored.to_json(), len(tokens), 0, finish_reason="length")

    @staticmethod
    def _from_prompt_logprobs(entries: list, tokens: list[int], start: int):
        if len(entries) != len(tokens):
            raise ValueError(f"prompt_logprobs for {len(entries)} positions, {len(tokens)} tokens sent")
        rows, actual = [], []
        for j in range(start, len(tokens)):
            found = {int(i): float(v["logprob"] if isinstance(v, dict) else v) for i, v in entries[j].items()}
            if tokens[j] not in found:
                raise ValueError(f"prompt_logprobs at position {j} leave out the token sent there")
            actual.append(found[tokens[j]])
            rows.append(sorted(found.items(), key=lambda e: -e[1]))
        return rows, actual

    def _from_echo(self, logprobs: dict, tokens: list[int], start: int):
        texts, token_lps, tops = logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]
        if len(texts) != len(tokens):
            raise ValueError(f"logprobs for {len(texts)} tokens, {len(tokens)} tokens sent (was max_tokens 0 honoured?)")
        rows, actual = [], []
        for j in range(start, len(tokens)):
            entries: dict[int, float] = {}
            for text, value in (tops[j] or {}).items():
                token_id = self.token_map.id_of(text, tokens[j] if self.token_map.names(text, tokens[j]) else None)
                if token_id is None:
                    self.dropped += 1
                    continue
                entries.setdefault(token_id, float(value))
            actual.append(float(token_lps[j]))
            rows.append(sorted(entries.items(), key=lambda e: -e[1]))
        return rows, actual


def _first_choice(resp: httpx.Response) -> dict | None:
    if resp.status_code != 200:
        return None
    try:
        choice = resp.json()["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return choice if isinstance(choice, dict) else None


def build_logprob_teacher(spec: str, tokenizer=None, cache_path: str | Path | None = None, *,
                          output_dir: str | Path | None = None, use_cache: bool = True, concurrency: int = 8,
                          api_key_env: str = "OPENAI_API_KEY", timeout: float = DEFAULT_TIMEOUT,
                          retry: RetryPolicy | None = None, batch_size: int = 8, progress: bool | None = None,
                          protocol: str = "auto", bf16: bool = False) -> LogprobTeacher:
    """The log-prob teacher a spec names: `openai:MODEL@URL` (any OpenAI route name; scoring always
    uses the completions route) served, with `tokenizer` its tokenizer (required: a tokenizer or a
    model reference); `hf:REF`, or any model reference, in process. The cache is `build_teacher`'s."""
    from mentor.teachers import default_cache_path

    def cache() -> TeacherCache | None:
        return TeacherCache(cache_path or default_cache_path(output_dir)) if use_cache else None

    scheme, _, rest = spec.partition(":")
    if scheme in OPENAI_ROUTES:
        _, model, base_url = parse_spec(spec)
        if tokenizer is None:
            raise MentorError(f"served teacher {spec!r}: give its tokenizer (a model reference with the same "
                              "tokenizer, e.g. the student's) to read token ids")
        return ServedLogprobTeacher(model, base_url, tokenizer, protocol=protocol, cache=cache(),
                                    concurrency=concurrency, api_key_env=api_key_env, timeout=timeout, retry=retry,
                                    progress=progress)
    ref = rest if scheme in HF_ROUTES else spec
    if not ref:
        raise MentorError(f"teacher spec {spec!r} names no model; write hf:MODEL_REF or openai:MODEL@URL")
    return HFLogprobTeacher(ref, cache=cache(), batch_size=batch_size, progress=progress, bf16=bf16)
