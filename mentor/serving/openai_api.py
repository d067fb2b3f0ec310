"""OpenAI's chat and completion requests as mentor reads them, and the prompt and settings they
become: one reading for the online endpoints and the batch API."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mentor.data.formats import message_text
from mentor.serving.generate import SamplingParams

MIN_TEMPERATURE = 1e-5


class RequestProblem(ValueError):
    """A request that cannot be answered as asked, with the body field it is about (OpenAI's `param`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI parameters mentor does not implement, with the values that ask for nothing: any other value
# is refused (400) rather than ignored, so a client never takes an answer for what it did not ask
UNSUPPORTED = {"logprobs": (False,), "top_logprobs": (0,), "echo": (False,), "frequency_penalty": (0, 0.0),
               "presence_penalty": (0, 0.0), "logit_bias": ({},), "best_of": (1,), "suffix": ("",), "tools": ([],),
               "functions": ([],), "response_format": ({"type": "text"},), "modalities": (["text"],),
               "tool_choice": ("none", "auto"), "function_call": ("none", "auto"), "audio": (),
               "prediction": (), "reasoning_effort": (), "verbosity": (), "web_search_options": ()}


NOT_IMPLEMENTED = "not implemented by this server: refused (400) unless it asks for nothing"


class Common(BaseModel):
    # a field this server does not know is refused (400 naming it), never ignored: the client would
    # take the answer for one that honoured it
    model_config = ConfigDict(extra="forbid")
    supported: ClassVar[frozenset[str]] = frozenset()  # fields of UNSUPPORTED a request kind does implement

    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    task: Literal["label", "rationale"] = Field("label", description="mentor: a step-by-step student's task")
    # OpenAI's bookkeeping fields: they do not change the answer, so they are accepted and not used
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None  # (tools are refused)
    # OpenAI's parameters this server does not implement (UNSUPPORTED): only their "off" values pass
    logprobs: Any = Field(None, description=NOT_IMPLEMENTED)
    top_logprobs: Any = Field(None, description=NOT_IMPLEMENTED)
    echo: Any = Field(None, description=NOT_IMPLEMENTED)
    frequency_penalty: Any = Field(None, description=NOT_IMPLEMENTED)
    presence_penalty: Any = Field(None, description=NOT_IMPLEMENTED)
    logit_bias: Any = Field(None, description=NOT_IMPLEMENTED)
    best_of: Any = Field(None, description=NOT_IMPLEMENTED)
    suffix: Any = Field(None, description=NOT_IMPLEMENTED)
    tools: Any = Field(None, description=NOT_IMPLEMENTED)
    functions: Any = Field(None, description=NOT_IMPLEMENTED)
    response_format: Any = Field(None, description=NOT_IMPLEMENTED)
    modalities: Any = Field(None, description=NOT_IMPLEMENTED)
    tool_choice: Any = Field(None, description=NOT_IMPLEMENTED)
    function_call: Any = Field(None, description=NOT_IMPLEMENTED)
    audio: Any = Field(None, description=NOT_IMPLEMENTED)
    prediction: Any = Field(None, description=NOT_IMPLEMENTED)
    reasoning_effort: Any = Field(None, description=NOT_IMPLEMENTED)
    verbosity: Any = Field(None, description=NOT_IMPLEMENTED)
    web_search_options: Any = Field(None, description=NOT_IMPLEMENTED)

    @field_validator(*UNSUPPORTED, mode="before")
    @classmethod
    def _refuse_unsupported(cls, value, info: ValidationInfo):
        # a validator per field: the 400 names the field as its param
        if info.field_name in cls.supported:
            return value
        nothing = UNSUPPORTED[info.field_name]
        if value is not None and not any(value == ok and type(value) is type(ok) for ok in nothing):
            raise ValueError(f"'{info.field_name}' is not supported by this server")
        return value

    def params(self, default_max: int = 256) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stop) > 4:
            raise RequestProblem("at most 4 stop sequences", "stop")
        # a temperature this close to 0 is greedy decoding, and sampling at it overflows to inf/nan
        temperature = self.temperature if self.temperature >= MIN_TEMPERATURE else 0.0
        return SamplingParams(max_new_tokens=self.max_tokens or default_max, temperature=temperature,
                              top_p=self.top_p, stop=tuple(stop), n=self.n, seed=self.seed,
                              top_k=0 if temperature > 0 else None)


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)


MAX_LOGPROBS = 256  # top log-probs per position a request may ask for (vLLM's default limit is 20)
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(Common):
    """A completion request. Besides generation it scores given tokens, as a teacher is asked to:
    `echo` with `logprobs` (OpenAI's legacy logprobs object for the prompt's tokens, `max_tokens` 0)
    and vLLM's `prompt_logprobs` (top log-probs by token id for every prompt position). A prompt may
    be token ids (one list, or a list of lists), scored exactly as given."""

    supported: ClassVar[frozenset[str]] = frozenset({"echo", "logprobs"})

    # at most 64 prompts; a prompt is any length
    prompt: str | Annotated[list[str], Field(max_length=64)] | TokenIds | Annotated[list[TokenIds], Field(max_length=64)]
    max_tokens: int | None = Field(None, ge=0, le=32768)  # 0: nothing generated (scoring the prompt)
    echo: bool = Field(False, description="the prompt before the completion, in `text` and in `logprobs`")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="top log-probs per token (prompt tokens "
                                 "with echo and max_tokens 0; generated tokens' are not implemented)")
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="vLLM: top log-probs, by token "
                                        "id, at every prompt position")
    return_tokens_as_token_ids: bool | None = Field(None, description="vLLM: tokens in `logprobs` written "
                                                    "'token_id:N'")

    @field_validator("logprobs", mode="before")
    @classmethod
    def _a_count(cls, value):
        # chat's logprobs is a switch, completions' a count: false asks for nothing, true is no count
        if value is False:
            return None
        if value is True:
            raise ValueError(f"'logprobs' of a completion is how many top log-probs to return (0 to {MAX_LOGPROBS})")
        return value

    @property
    def token_prompts(self) -> list[list[int]] | None:
        """The prompts as token ids, when given so."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], int):
            return [p]
        if isinstance(p, list) and p and isinstance(p[0], list):
            return p
        return None

    def scoring_problem(self) -> RequestProblem | None:
        """What this server cannot answer among the scoring fields, or None."""
        generates = self.max_tokens != 0
        if self.logprobs is not None and not self.echo:
            return RequestProblem("logprobs of generated tokens are not implemented by this server; score the "
                                  "prompt with echo and max_tokens 0, or with prompt_logprobs", "logprobs")
        if self.logprobs is not None and generates:
            return RequestProblem("with echo and logprobs ask max_tokens 0: logprobs of generated tokens are not "
                                  "implemented by this server (the prompt's are)", "max_tokens")
        if self.token_prompts is not None and generates:
            return RequestProblem("a prompt of token ids is scored, not generated from, by this server: ask "
                                  "max_tokens 0 (with echo and logprobs, or prompt_logprobs)", "prompt")
        if self.stream and (self.scores or self.echo or not generates):
            return RequestProblem("echo and scoring a prompt (logprobs, prompt_logprobs, max_tokens 0) are not "
                                  "streamed by this server; leave stream out", "stream")
        if not generates and self.n != 1:
            return RequestProblem("n must be 1 when nothing is generated (max_tokens 0)", "n")
        return None

    @property
    def scores(self) -> bool:
        """Whether the prompt's tokens are scored (echo with logprobs, or prompt_logprobs)."""
        return (self.echo and self.logprobs is not None) or self.prompt_logprobs is not None


def text_messages(messages: list[Message]) -> list[dict]:
    """The conversation as role and text, "developer" read as "system"; a content part that is not
    text (an image, audio, a file) is refused, naming it: multimodal serving is not implemented,
    and dropping the part would answer a question the client did not ask."""
    for i, m in enumerate(messages):
        for j, part in enumerate(m.content if isinstance(m.content, list) else []):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestProblem(f"messages[{i}].content[{j}]: content parts of type {str(part.get('type'))[:40]!r} "
                                     "are not supported by this server (text parts only)",
                                     f"messages[{i}].content[{j}]")
    return [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m.content)}
            for m in messages]


def chat_prompt(p, body: ChatRequest) -> tuple[str, SamplingParams]:
    """The rendered prompt (the model's chat template, instruction and task prefix) and settings.
    `p` is the model's `Predictor`. Raises RequestProblem for a request that cannot be answered."""
    messages = text_messages(body.messages)
    if messages[-1]["role"] != "user":
        raise RequestProblem("the last message must be the user's", "messages")
    if body.task == "rationale" and not p.rationale_prefix:
        raise RequestProblem(f"model '{body.model}' has no rationale task (only step-by-step students do)", "task")
    prefix = p.rationale_prefix if body.task == "rationale" else None
    item = messages if len(messages) > 1 else messages[0]["content"]
    params = body.model_copy(update={"max_tokens": body.max_completion_tokens or body.max_tokens}).params()
    return p.render(item, prefix), params


def usage(outputs_per_prompt) -> dict:
    prompt = sum(outs[0].prompt_tokens for outs in outputs_per_prompt if outs)
    completion = sum(o.completion_tokens for outs in outputs_per_prompt for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_response(rid: str, created: int, model: str, outputs) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                         "finish_reason": o.finish_reason} for i, o in enumerate(outputs)],
            "usage": usage([outputs])}


def completion_response(rid: str, created: int, model: str, outputs_per_prompt, n: int) -> dict:
    choices = [{"index": k * n + i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
               for k, outs in enumerate(outputs_per_prompt) for i, o in enumerate(outs)]
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": usage(outputs_per_prompt)}


def _token_text(tokenizer, token_id: int, as_ids: bool) -> str:
    return f"token_id:{token_id}" if as_ids else tokenizer.decode([token_id])


OFFSET_CONTEXT = 8  # tokens decoded before each one to find the text it adds


def text_offsets(tokenizer, ids: list[int]) -> list[int]:
    """Each token's offset in the prompt's text as echoed (decoded without special tokens): the length
    of the text the tokens before it decode to. A special token (a BOS) adds nothing, so it takes no
    room; a token adds what decoding it after the few tokens before it adds (decoding is contextual: a
    sentencepiece word's space, the bytes of one character split over tokens), so the offsets are the
    cumulative decoding's in linear time."""
    offsets, at = [], 0
    for i, token in enumerate(ids):
        offsets.append(at)
        context = list(ids[max(0, i - OFFSET_CONTEXT):i])
        before = tokenizer.decode(context, skip_special_tokens=True) if context else ""
        at += len(tokenizer.decode([*context, token], skip_special_tokens=True)) - len(before)
    return offsets


def echo_logprobs(tokenizer, scores, k: int, as_ids: bool = False) -> dict:
    """OpenAI's legacy `logprobs` object for a scored prompt: each token as text (or 'token_id:N'),
    its log-prob (None for the first), the top `k` as {token: log-prob} (a token text several ids
    decode to keeps its most likely one, as one key can), and each token's offset in the echoed text
    (`text_offsets`: a special token takes no room)."""
    tokens = [_token_text(tokenizer, i, as_ids) for i in scores.ids]
    top: list[dict | None] = []
    for ids, values in zip(scores.top_ids, scores.top_logprobs):
        if ids is None:
            top.append(None)
            continue
        entry: dict[str, float] = {}
        for i, v in zip(ids[:k], values[:k]):
            entry.setdefault(_token_text(tokenizer, i, as_ids), v)
        top.append(entry)
    return {"tokens": tokens, "token_logprobs": scores.token_logprobs, "top_logprobs": top,
            "text_offset": text_offsets(tokenizer, scores.ids)}


def vllm_prompt_logprobs(tokenizer, scores, k: int) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per prompt position None (the first) or {token id: {logprob, rank,
    decoded_token}} holding the top `k` and the actual token (whose rank may be past k)."""
    out: list[dict | None] = []
    for pos, (ids, values) in enumerate(zip(scores.top_ids, scores.top_logprobs)):
        if ids is None:
            out.append(None)
            continue
        entry = {str(i): {"logprob": v, "rank": r + 1, "decoded_token": tokenizer.decode([i])}
                 for r, (i, v) in enumerate(zip(ids[:k], values[:k]))}
        actual = scores.ids[pos]
        if str(actual) not in entry:
            entry[str(actual)] = {"logprob": scores.token_logprobs[pos], "rank": scores.token_ranks[pos],
                                  "decoded_token": tokenizer.decode([actual])}
        out.append(entry)
    return out
