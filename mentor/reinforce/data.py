"""Read and validate reinforcement data: one prompt a line, with whatever the grader reads.

OpenAI's reinforcement files: {"messages": [...ending with a user turn], "reference_answer": ...,
any other field}; the cloud's: {"input_text": ..., ...}; TRL's: {"prompt": ...}. Every field of
the line is the grader's `item` ({{item.reference_answer}}). OpenAI's `developer` role is a system
turn, and content given as a list of text parts is their text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mentor.rlhf.data import Prompt, load_lines, parse_prompt


@dataclass
class Item:
    """A prompt to sample answers to, and the line it came from (the grader's `item`)."""

    prompt: Prompt
    row: dict
    file: str
    line: int

    @property
    def text(self) -> str | list[dict]:
        """What a model is asked: a plain prompt as a string, a conversation as its messages."""
        if self.prompt.kind == "text":
            return self.prompt.messages[-1]["content"]
        return self.prompt.messages


def _openai_messages(value: object, problems: list) -> object:
    """OpenAI's message forms in the plain form the prompt parser takes (anything else passes through,
    for it to name what is wrong)."""
    if not isinstance(value, list):
        return value
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            out.append(m)
            continue
        m = dict(m)
        if m.get("role") == "developer":
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    problems.append((f"messages[{i}].content[{j}]", f"only text parts are read here, got {kind!r}"))
            m["content"] = "".join(texts)
        out.append(m)
    return out


def parse_item(row: object) -> tuple[Prompt | None, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    if isinstance(row, dict) and "messages" in row:
        row = {**row, "messages": _openai_messages(row["messages"], problems)}
    if problems:
        return None, problems
    return parse_prompt(row)


def load_items(path: str | Path, max_examples: int = 10_000) -> list[Item]:
    """Read and validate a reinforcement JSONL file; raise DataValidationError listing every bad line."""

    def parse(row: object) -> tuple[Item | None, list[tuple[str, str]]]:
        prompt, problems = parse_item(row)
        return (Item(prompt, row, "", 0) if prompt is not None and isinstance(row, dict) else None), problems

    return load_lines(path, parse, "prompt", max_examples)
