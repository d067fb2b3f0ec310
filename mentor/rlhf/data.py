"""Read and validate preference and prompt data.

Preference pairs (reward model, DPO), one JSON object a line, in either form:

- cloud:  {"input_text": "...", "candidate_0": "...", "candidate_1": "...", "choice": 0 | 1}
- TRL:    {"prompt": "..." | [messages], "chosen": "..." | [assistant message], "rejected": ...}

Prompts (the reinforcement-learning stage): {"input_text": "..."}, or {"prompt": "..." | [messages]},
or {"messages": [...]} ending with a user turn.

As for tuning data, every line is checked before anything trains and every problem names the
file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mentor.data.jsonl import read_jsonl
from mentor.errors import MentorError

ROLES = ("system", "user", "assistant")


@dataclass
class Prompt:
    """What the model is asked: a conversation ending with a user turn."""

    messages: list[dict]
    kind: str  # "text" (a single input_text) | "chat"
    file: str = ""
    line: int = 0
    extra: dict = field(default_factory=dict)

    def with_instruction(self, instruction: str | None) -> Prompt:
        """The instruction goes in front of the first user turn, as the cloud's RLHF job does."""
        if not instruction:
            return self
        msgs = [dict(m) for m in self.messages]
        first_user = next(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[first_user]["content"] = f"{instruction}\n{msgs[first_user]['content']}"
        return Prompt(msgs, self.kind, self.file, self.line, self.extra)


@dataclass
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str

    @property
    def file(self) -> str:
        return self.prompt.file

    @property
    def line(self) -> int:
        return self.prompt.line


def _string(row: dict, name: str, problems: list, where: str | None = None) -> str | None:
    where = where or name
    if name not in row:
        problems.append((where, "missing"))
        return None
    value = row[name]
    if not isinstance(value, str):
        problems.append((where, f"must be a string, got {type(value).__name__}"))
    elif not value.strip():
        problems.append((where, "is empty"))
    else:
        return value
    return None


def _messages(value: object, name: str, problems: list) -> list[dict] | None:
    """A list of {"role", "content"} with string contents; the caller checks the order of roles."""
    if not isinstance(value, list) or not value:
        problems.append((name, "must be a non-empty string or a non-empty list of {\"role\", \"content\"} messages"))
        return None
    out, ok = [], True
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            problems.append((f"{name}[{i}]", "must be an object with 'role' and 'content'"))
            ok = False
            continue
        if m.get("role") not in ROLES:
            problems.append((f"{name}[{i}].role", f"unknown role {m.get('role')!r} (use system, user or assistant)"))
            ok = False
        content = _string(m, "content", problems, f"{name}[{i}].content")
        ok = ok and content is not None
        out.append({"role": m.get("role"), "content": content})
    return out if ok else None


def _prompt_messages(value: object, name: str, problems: list) -> tuple[list[dict], str] | None:
    """A prompt given as a string or as a conversation that ends with a user turn."""
    if isinstance(value, str):
        if not value.strip():
            problems.append((name, "is empty"))
            return None
        return [{"role": "user", "content": value}], "text"
    msgs = _messages(value, name, problems)
    if msgs is None:
        return None
    roles = [m["role"] for m in msgs]
    body_start = 1 if roles[0] == "system" else 0
    for i, role in enumerate(roles):
        if role == "system" and i != 0:
            problems.append((f"{name}[{i}].role", "a system message may only come first"))
            return None
    for i in range(body_start, len(roles)):
        expected = "user" if (i - body_start) % 2 == 0 else "assistant"
        if roles[i] != expected:
            problems.append((f"{name}[{i}].role", f"wrong turn order: expected '{expected}' here, got '{roles[i]}' "
                                                  "(turns alternate user, assistant, starting with user)"))
            return None
    if len(roles) == body_start or roles[-1] != "user":
        problems.append((name, "must end with a user turn (the answer is what is being compared)"))
        return None
    return msgs, "chat"


def _completion(row: dict, name: str, problems: list) -> str | None:
    """A completion given as a string or as a single assistant message."""
    if name not in row:
        problems.append((name, "missing"))
        return None
    value = row[name]
    if isinstance(value, str):
        if not value.strip():
            problems.append((name, "is empty"))
            return None
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            problems.append((f"{name}[0].role", f"must be 'assistant', got {value[0].get('role')!r}"))
            return None
        return _string(value[0], "content", problems, f"{name}[0].content")
    problems.append((name, "must be a non-empty string or a list holding one {\"role\": \"assistant\", \"content\": ...} message"))
    return None


CLOUD_FIELDS = ("input_text", "candidate_0", "candidate_1", "choice")
TRL_FIELDS = ("prompt", "chosen", "rejected")


def parse_preference(row: object) -> tuple[PreferencePair | None, list[tuple[str, str]]]:
    """One JSON value as a preference pair, or the (field, message) problems that stop it."""
    problems: list[tuple[str, str]] = []
    if not isinstance(row, dict):
        return None, [("(line)", f"must be a JSON object, got {type(row).__name__}")]
    if any(k in row for k in ("candidate_0", "candidate_1", "choice")) or ("input_text" in row and "prompt" not in row):
        inp = _string(row, "input_text", problems)
        c0 = _string(row, "candidate_0", problems)
        c1 = _string(row, "candidate_1", problems)
        choice = row.get("choice")
        if "choice" not in row:
            problems.append(("choice", "missing (0 if candidate_0 is preferred, 1 if candidate_1 is)"))
        elif isinstance(choice, bool) or choice not in (0, 1):
            problems.append(("choice", f"must be 0 or 1, got {json.dumps(choice)}"))
        if problems:
            return None, problems
        chosen, rejected = (c0, c1) if choice == 0 else (c1, c0)
        if chosen.strip() == rejected.strip():
            return None, [("candidate_1", "is the same text as candidate_0: there is nothing to prefer")]
        extra = {k: v for k, v in row.items() if k not in CLOUD_FIELDS}
        return PreferencePair(Prompt([{"role": "user", "content": inp}], "text", extra=extra), chosen, rejected), []
    if any(k in row for k in TRL_FIELDS):
        prompt = None
        if "prompt" not in row:
            problems.append(("prompt", "missing (the chosen and rejected answers answer this prompt)"))
        else:
            prompt = _prompt_messages(row["prompt"], "prompt", problems)
        chosen = _completion(row, "chosen", problems)
        rejected = _completion(row, "rejected", problems)
        if problems:
            return None, problems
        if chosen.strip() == rejected.strip():
            return None, [("rejected", "is the same text as chosen: there is nothing to prefer")]
        extra = {k: v for k, v in row.items() if k not in TRL_FIELDS}
        return PreferencePair(Prompt(prompt[0], prompt[1], extra=extra), chosen, rejected), []
    return None, [("(line)", "not a preference pair: give input_text, candidate_0, candidate_1 and choice, "
                             "or prompt, chosen and rejected")]


def parse_prompt(row: object) -> tuple[Prompt | None, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    if not isinstance(row, dict):
        return None, [("(line)", f"must be a JSON object, got {type(row).__name__}")]
    for name in ("input_text", "prompt", "messages"):
        if name in row:
            if name == "input_text":
                text = _string(row, name, problems)
                found = ([{"role": "user", "content": text}], "text") if text is not None else None
            else:
                found = _prompt_messages(row[name], name, problems)
            if found is None:
                return None, problems
            extra = {k: v for k, v in row.items() if k != name}
            return Prompt(found[0], found[1], extra=extra), []
    return None, [("input_text", "missing (a prompt line holds 'input_text', or 'prompt', or 'messages' ending with a user turn)")]


def load_lines(path: str | Path, parse, what: str, max_examples: int) -> list:
    """Every line of a JSONL file parsed by `parse(row) -> (item, problems)`; each item (or its prompt)
    records its file and line. Raises DataValidationError listing every bad line, MentorError for an
    empty file or one past `max_examples`."""
    def parse_line(row: dict, lineno: int):
        item, found = parse(row)
        if item is not None:
            target = item.prompt if isinstance(item, PreferencePair) else item
            target.file, target.line = str(path), lineno
        return item, found

    items = read_jsonl(path, parse_line, what)
    if not items:
        raise MentorError(f"{path}: no {what}s (the file is empty)")
    if len(items) > max_examples:
        raise MentorError(f"{path}: {len(items)} {what}s, more than the maximum of {max_examples} "
                          "(raise max_examples to allow it)")
    return items


def load_preferences(path: str | Path, max_examples: int = 10_000) -> list[PreferencePair]:
    """Read and validate a preference JSONL file; raise DataValidationError listing every bad line."""
    return load_lines(path, parse_preference, "preference pair", max_examples)


def load_prompts(path: str | Path, max_examples: int = 10_000) -> list[Prompt]:
    """Read and validate a prompt JSONL file; raise DataValidationError listing every bad line."""
    return load_lines(path, parse_prompt, "prompt", max_examples)
