"""OpenAI's chat and completion requests as mentor reads them, and the prompt and settings they
become: one reading for the online endpoints and the batch API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


class CompletionRequest(Common):
    prompt: str | Annotated[list[str], Field(max_length=64)]  # at most 64 prompts; a prompt is any length


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
