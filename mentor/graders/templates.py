"""Grader templates: `{{ item.reference_answer }}`, `{{ sample.output_text }}`, `{{ item.choices[1] }}`.

OpenAI's syntax: a `namespace.path` between double braces, the namespace `item` (the dataset line)
or `sample` (the model's answer: `output_text`, `output_json`, `output_tools`, `choices`), nested
values reached with dots and `[N]` indexes. A string value is put in as it is, anything else as
JSON. A template naming a value that is not there is an error that names it (a missing field
would otherwise grade every answer against an empty string, silently).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mentor.errors import MentorError

NAMESPACES = ("item", "sample")
# what OpenAI puts in the sample namespace
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices", "output_audio")

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"\.?([^.\[\]\s{}]+)|\[(-?\d+)\]")


class TemplateError(MentorError):
    """A template naming a value that is missing; `kind` is OpenAI's error flag for it."""

    def __init__(self, message: str, kind: str = "invalid_variable_error"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Reference:
    """One `{{ namespace.path }}`: where it stands in the template and what it names."""

    text: str  # the placeholder as written
    namespace: str
    path: tuple[str | int, ...]

    @property
    def dotted(self) -> str:
        out = self.namespace
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
        return out


def parse_reference(inner: str, text: str) -> Reference:
    """`item.a.b[0]` -> Reference; MentorError (no 'where': the caller adds it) when it is not one."""
    body = inner.strip()
    namespace, dot, rest = body.partition(".")
    if namespace not in NAMESPACES or not dot or not rest:
        raise MentorError(f"template {text!r}: write {{{{item.FIELD}}}} or {{{{sample.output_text}}}} (the namespaces "
                          f"are item and sample)")
    path: list[str | int] = []
    pos = 0
    rest = "." + rest
    while pos < len(rest):
        m = _SEGMENT.match(rest, pos)
        if not m or m.end() == pos:
            raise MentorError(f"template {text!r}: cannot read the path after {namespace!r} (use dots and [N])")
        path.append(m[1] if m[1] is not None else int(m[2]))
        pos = m.end()
    if namespace == "sample" and path[0] not in SAMPLE_FIELDS:
        raise MentorError(f"template {text!r}: the sample has {', '.join(SAMPLE_FIELDS)}, not {path[0]!r}")
    return Reference(text, namespace, tuple(path))


def references(template: str) -> list[Reference]:
    """Every placeholder of a template, checked for syntax."""
    return [parse_reference(m[1], m[0]) for m in _PLACEHOLDER.finditer(template)]


def _lookup(ref: Reference, context: dict[str, Any]) -> Any:
    value: Any = context.get(ref.namespace)
    walked = ref.namespace
    for part in ref.path:
        if isinstance(part, int):
            if not isinstance(value, list) or not -len(value) <= part < len(value):
                raise TemplateError(f"template {ref.text!r}: {walked} has no item [{part}] (needed for {ref.dotted})")
            value = value[part]
            walked += f"[{part}]"
        else:
            if not isinstance(value, dict) or part not in value:
                if ref.namespace == "sample" and walked == "sample" and part == "output_json":
                    raise TemplateError(f"template {ref.text!r}: the sample's output is not JSON, so there is no "
                                        "sample.output_json", kind="sample_parse_error")
                what = "the item" if walked == "item" else walked
                raise TemplateError(f"template {ref.text!r}: {what} has no field {part!r} ({ref.dotted} is missing)")
            value = value[part]
            walked += f".{part}"
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, context: dict[str, Any]) -> str:
    """The template with every placeholder replaced; TemplateError naming a missing value."""
    if "{{" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: _as_text(_lookup(parse_reference(m[1], m[0]), context)), template)


def resolve(template: str, context: dict[str, Any]) -> Any:
    """A template that is one placeholder alone gives the value itself (a list of choices stays a
    list); any other template renders to text."""
    m = _PLACEHOLDER.fullmatch(template.strip())
    if m:
        return _lookup(parse_reference(m[1], m[0]), context)
    return render(template, context)


def item_references(templates: Iterator[tuple[str, str]]) -> Iterator[tuple[str, Reference]]:
    """(field, reference) for each `{{item.*}}` of the (field, template) pairs."""
    for field, template in templates:
        for ref in references(template):
            if ref.namespace == "item":
                yield field, ref


def check_item(templates: Iterator[tuple[str, str]], item: dict, where: str) -> None:
    """Refuse templates naming a field the example `item` lacks, naming the grader field."""
    for field, ref in item_references(templates):
        try:
            _lookup(ref, {"item": item})
        except TemplateError as err:
            raise MentorError(f"{where}: field '{field}': {err}") from None


def sample_context(sample: dict | str) -> dict[str, Any]:
    """The sample namespace from what a caller gives: a text, or {"output_text": ..., ...};
    `output_json` is filled in when the text is JSON (as OpenAI does)."""
    if isinstance(sample, str):
        sample = {"output_text": sample}
    elif not isinstance(sample, dict):
        raise TemplateError(f"a sample is a text or an object with 'output_text', not {type(sample).__name__}",
                            kind="sample_parse_error")
    out = dict(sample)
    text = out.get("output_text")
    if not isinstance(text, str):
        raise TemplateError("the sample has no 'output_text' text", kind="sample_parse_error")
    if "output_json" not in out:
        stripped = text.strip()
        if stripped[:1] in ("{", "["):
            try:
                out["output_json"] = json.loads(stripped)
            except ValueError:
                pass
    return out
