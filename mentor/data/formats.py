"""Read and validate tuning data in the formats users bring from the cloud services.

- text:        {"input_text": "...", "output_text": "..."}
- chat:        {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
- Gemini chat: {"systemInstruction"?: {"parts": [{"text": ...}]},
                "contents": [{"role": "user"|"model", "parts": [{"text": "..."}]}, ...]}

Every line is checked before anything trains, and every problem is reported with file, line
and field, so a user fixes the file once instead of once per error.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mentor.data.jsonl import read_jsonl
from mentor.errors import MentorError

log = logging.getLogger("mentor")


@dataclass
class Example:
    """One training example as a conversation; the loss is on assistant turns only."""

    messages: list[dict]
    kind: str  # "text" | "chat"
    file: str = ""
    line: int = 0
    extra: dict = field(default_factory=dict)  # other fields of the row (labels, metadata)

    @property
    def prompt_text(self) -> str:
        return self.messages[-2]["content"] if self.kind == "text" else ""


def _text(row: dict, name: str, where: str, problems: list) -> str | None:
    value = row.get(name)
    if name not in row:
        problems.append((where or name, "missing"))
    elif not isinstance(value, str):
        problems.append((where or name, f"must be a string, got {type(value).__name__}"))
    elif not value.strip():
        problems.append((where or name, "is empty"))
    else:
        return value
    return None


def _check_turn_order(messages: list[dict], prefix: str, problems: list, last: str = "assistant") -> None:
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles):
        if role == "system" and i != 0:
            problems.append((f"{prefix}[{i}].role", "a system message may only come first"))
    body = [(i, r) for i, r in enumerate(roles) if r != "system"]
    for n, (i, role) in enumerate(body):
        expected = "user" if n % 2 == 0 else "assistant"
        if role != expected:
            problems.append((f"{prefix}[{i}].role", f"wrong turn order: expected '{expected}' here, got '{role}' "
                             "(turns must alternate user, assistant, starting with user)"))
            return
    if not body:
        problems.append((prefix, "has no user/assistant turns"))
    elif body[-1][1] != last:
        problems.append((prefix, "must end with an assistant turn (the output to learn)" if last == "assistant"
                         else "must end with a user turn (the one to answer)"))


def _messages(msgs: object, problems: list) -> list[dict]:
    """The turns of a `messages` field as {role, content}, each problem added to `problems`."""
    if not isinstance(msgs, list) or not msgs:
        problems.append(("messages", "must be a non-empty list"))
        return []
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append((f"messages[{i}]", "must be an object with 'role' and 'content'"))
            continue
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            problems.append((f"messages[{i}].role", f"unknown role {role!r} (use system, user or assistant)"))
        content = _text(m, "content", f"messages[{i}].content", problems)
        turn = {"role": role, "content": content}
        if "weight" in m:  # OpenAI's chat format: weight 0 keeps an assistant turn out of the loss
            if role != "assistant" or m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                problems.append((f"messages[{i}].weight", "must be 0 or 1, on an assistant turn"))
            elif m["weight"] == 0:
                turn["weight"] = 0
        out.append(turn)
    return out


def message_text(content):
    """A message's text: a string, OpenAI's list of parts (the text parts joined), "" for none;
    anything else is returned as it is, for the caller to refuse."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content


def prompt_messages(msgs: object) -> tuple[list[dict] | None, list[tuple[str, str]]]:
    """A conversation to answer, read as the chat API reads it ("developer" is "system", content
    may be a list of parts), checked, ending in the user's turn (a final assistant turn, an answer
    already given, is dropped unread: it is the reference, not part of the prompt)."""
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    if isinstance(msgs, list):
        msgs = [{**m, "role": "system" if m.get("role") == "developer" else m.get("role"),
                 **({"content": message_text(m["content"])} if "content" in m else {})}
                if isinstance(m, dict) else m for m in msgs]
    problems: list[tuple[str, str]] = []
    out = _messages(msgs, problems)
    if not problems:
        _check_turn_order(out, "messages", problems, last="user")
    return (None if problems else out), problems


def parse_row(row: object, text_only_ok: bool = True) -> tuple[Example | None, list[tuple[str, str]]]:
    """Turn one JSON value into an Example, or into a list of (field, message) problems."""
    problems: list[tuple[str, str]] = []
    if not isinstance(row, dict):
        return None, [("(line)", f"must be a JSON object, got {type(row).__name__}")]
    formats = [f for f in ("messages", "contents", "input_text") if f in row]
    if len(formats) > 1:  # which one holds the example cannot be told
        return None, [(formats[1], f"this row also has '{formats[0]}': give one format per row")]
    if "messages" in row:
        out = _messages(row["messages"], problems)
        if not problems:
            _check_turn_order(out, "messages", problems)
        if not problems and out[-1].get("weight") == 0:
            problems.append((f"messages[{len(out) - 1}].weight", "0 on the last assistant turn leaves nothing to "
                             "learn from this row (weight 0 is for earlier turns)"))
        extra = {k: v for k, v in row.items() if k != "messages"}
        return (Example(out, "chat", extra=extra) if not problems else None), problems
    if "contents" in row:
        contents = row["contents"]
        if not isinstance(contents, list) or not contents:
            return None, [("contents", "must be a non-empty list")]
        out = []
        system = row.get("systemInstruction") or row.get("system_instruction")
        if system is not None:
            parts = system.get("parts") if isinstance(system, dict) else None
            if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
                problems.append(("systemInstruction.parts", "must be a list of {\"text\": ...} parts"))
            else:
                out.append({"role": "system", "content": "".join(p["text"] for p in parts)})
        for i, c in enumerate(contents):
            if not isinstance(c, dict):
                problems.append((f"contents[{i}]", "must be an object with 'role' and 'parts'"))
                continue
            role = c.get("role")
            if role not in ("user", "model"):
                problems.append((f"contents[{i}].role", f"unknown role {role!r} (use user or model)"))
            parts = c.get("parts")
            if not isinstance(parts, list) or not parts:
                problems.append((f"contents[{i}].parts", "must be a non-empty list"))
                continue
            texts = []
            for j, p in enumerate(parts):
                t = _text(p, "text", f"contents[{i}].parts[{j}].text", problems) if isinstance(p, dict) else None
                if not isinstance(p, dict):
                    problems.append((f"contents[{i}].parts[{j}]", "must be an object with 'text'"))
                texts.append(t or "")
            out.append({"role": "assistant" if role == "model" else role, "content": "".join(texts)})
        if not problems:
            _check_turn_order(out, "contents", problems)
        return (Example(out, "chat") if not problems else None), problems
    if "input_text" in row or "output_text" in row:
        inp = _text(row, "input_text", "", problems)
        out_text = _text(row, "output_text", "", problems)
        if problems:
            return None, problems
        extra = {k: v for k, v in row.items() if k not in ("input_text", "output_text")}
        msgs = [{"role": "user", "content": inp}, {"role": "assistant", "content": out_text}]
        return Example(msgs, "text", extra=extra), []
    return None, [("(line)", "no 'input_text'/'output_text', 'messages' or 'contents' field: not a known tuning format")]


def load_examples(path: str | Path, max_examples: int = 10_000) -> list[Example]:
    """Read and validate a whole JSONL file; raise DataValidationError listing every bad line."""
    def parse(row: dict, lineno: int):
        ex, found = parse_row(row)
        if ex is not None:
            ex.file, ex.line = str(path), lineno
        return ex, found

    examples = read_jsonl(path, parse, "data")
    if not examples:
        raise MentorError(f"{path}: no examples (the file is empty)")
    _note_formats(examples, path)
    if len(examples) > max_examples:
        raise MentorError(f"{path}: {len(examples)} examples, more than the maximum of {max_examples} (raise max_examples to allow it)")
    return examples


def _note_formats(examples: list[Example], path) -> None:
    """A file may mix text rows and conversations (OpenAI or Gemini): a text row is then the
    conversation user: input_text -> assistant: output_text, so all are encoded alike (without a chat
    template too). Mixing is said once, since it is often two files pasted together."""
    kinds = Counter(ex.kind for ex in examples)
    if len(kinds) > 1:
        for ex in examples:
            ex.kind = "chat"
        log.warning("%s mixes formats (%s); every row is trained as a conversation, text rows as one user turn "
                    "and one assistant turn", path, ", ".join(f"{n} {k} rows" for k, n in sorted(kinds.items())))
