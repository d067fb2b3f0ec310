"""The chain-of-thought answer corpus: which completion styles `parse_completion` reads, measured.

Three parts, each a list of `Item`s scored the same way (`score`):

- ``tests/data/cot_corpus/*.jsonl``: completions as written in public sources (the few-shot CoT
  exemplars of Wei et al. 2022 and Wang et al. 2022, zero-shot-CoT outputs of text-davinci-002
  from Kojima et al. 2022's logs, GSM8K and MATH solutions, the Minerva prompt) and completions
  written for the corpus in other common formats, each with the answer a reader would take from
  it (``expected``; null when the completion should be refused).
- reasoning-gym, generated at run time: GSM-Symbolic worked solutions ("... #### 72") and the
  answers of numeric tasks, bare and in reasoning-gym's ``<answer>`` tags.
- The 1,000 real PaLM 540B completions on SVAMP in ../shared/data, read in place (`svamp_rows`):
  what counts there is whether a numeric answer was read at all; agreeing with the gold answer is
  the teacher's accuracy, not the parser's.

Used by tests/test_parsing_corpus.py (floors per style) and bench/parse_rates.py (the table).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from mentor.tasks.answers import Parsed, parse_completion
from mentor.tasks.arithmetic import format_number

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "cot_corpus"
FIELDS = ("style", "source", "task", "completion", "expected")


@dataclass(frozen=True)
class Item:
    """One completion and the answer a reader takes from it (None: it should be refused)."""

    style: str
    source: str
    task: str
    completion: str
    expected: str | None
    choices: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    where: str = ""  # file:line, or the generator and index
    fields: tuple[str, ...] = ()  # input field labels of a user's own prompt format ("Review")

    def parse(self) -> Parsed:
        return parse_completion(self.completion, self.task, choices=list(self.choices) if self.choices else None,
                                labels=list(self.labels) if self.labels else None, fields=self.fields)


def short_source(source: str) -> str:
    """The source without the exemplar detail: "Wei et al. 2022, ..., exemplar 3" -> "Wei et al. 2022"."""
    return re.split(r"[,:;]", source, maxsplit=1)[0].strip()


# ------------------------------------------------------------------------------------------------
# The corpus files
# ------------------------------------------------------------------------------------------------


def load_corpus(directory: Path = CORPUS_DIR) -> list[Item]:
    items = []
    for path in sorted(directory.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in FIELDS if k not in row]
                if missing:
                    raise ValueError(f"{path.name}:{n}: missing {', '.join(missing)}")
                items.append(Item(row["style"], row["source"], row["task"], row["completion"], row["expected"],
                                  tuple(row["choices"]) if row.get("choices") else None,
                                  tuple(row["labels"]) if row.get("labels") else None, f"{path.name}:{n}",
                                  tuple(row.get("fields") or ())))
    return items


# ------------------------------------------------------------------------------------------------
# reasoning-gym, generated at run time
# ------------------------------------------------------------------------------------------------

RG_SEED = 16
# Tasks whose answer is one number, and how to read the gold value without mentor's parser.
RG_NUMERIC = (
    "basic_arithmetic", "chain_sum", "decimal_chain_sum", "decimal_arithmetic", "products", "gcd", "lcm",
    "simple_equations", "count_primes", "count_bits", "letter_counting", "leg_counting", "aiw", "simple_geometry",
    "number_format", "coin_flip", "dice", "power_function", "fraction_simplification", "bitwise_arithmetic",
)
RG_STYLE_SOLUTIONS = "reasoning-gym gsm_symbolic solutions (####)"
RG_STYLE_SOLUTIONS_TAGS = "reasoning-gym gsm_symbolic solutions in <answer> tags"
RG_STYLE_DIRECT = f"reasoning-gym answers of {len(RG_NUMERIC) + 1} tasks, bare"
RG_STYLE_DIRECT_TAGS = f"reasoning-gym answers of {len(RG_NUMERIC) + 1} tasks in <answer> tags"


def _rg_value(name: str, entry: dict) -> Fraction:
    if name == "fraction_simplification":  # the answer is LaTeX or a/b in several styles
        meta = entry["metadata"]
        return Fraction(meta["simplified_numerator"], meta["simplified_denominator"])
    if name == "bitwise_arithmetic":  # hexadecimal, "-0x3"
        return Fraction(int(entry["answer"], 16))
    return Fraction(entry["answer"])


def reasoning_gym_items(solutions: int = 200, per_task: int = 10) -> list[Item]:
    """GSM-Symbolic worked solutions as written ("... #### 72") and in the ``<answer>`` tags
    reasoning-gym's system prompts ask for; the answers of numeric tasks and of the yes/no
    syllogism task, bare and in tags. Raises ImportError without reasoning_gym."""
    import reasoning_gym

    items = []
    source = f"reasoning-gym gsm_symbolic, seed {RG_SEED}"
    for i, entry in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=solutions, seed=RG_SEED)):
        cot = entry["metadata"]["answer_cot"]
        expected = format_number(Fraction(entry["answer"]))
        items.append(Item(RG_STYLE_SOLUTIONS, source, "math", cot, expected, where=f"gsm_symbolic[{i}]"))
        tagged = re.sub(r"####\s*(\S+)\s*$", r"<answer>\1</answer>", cot.rstrip())
        items.append(Item(RG_STYLE_SOLUTIONS_TAGS, source, "math", tagged, expected, where=f"gsm_symbolic[{i}]"))
    for name in RG_NUMERIC:
        source = f"reasoning-gym: {name}, seed {RG_SEED}"
        for i, entry in enumerate(reasoning_gym.create_dataset(name, size=per_task, seed=RG_SEED)):
            answer, expected = str(entry["answer"]), format_number(_rg_value(name, entry))
            items.append(Item(RG_STYLE_DIRECT, source, "math", answer, expected, where=f"{name}[{i}]"))
            items.append(Item(RG_STYLE_DIRECT_TAGS, source, "math", f"<answer>{answer}</answer>", expected, where=f"{name}[{i}]"))
    yes_no = ("yes", "no")
    for i, entry in enumerate(reasoning_gym.create_dataset("syllogism", size=2 * per_task, seed=RG_SEED)):
        answer, source = entry["answer"], f"reasoning-gym: syllogism, seed {RG_SEED}"
        items.append(Item(RG_STYLE_DIRECT, source, "classify", answer, answer.lower(), labels=yes_no, where=f"syllogism[{i}]"))
        items.append(Item(RG_STYLE_DIRECT_TAGS, source, "classify", f"<answer>{answer}</answer>", answer.lower(),
                          labels=yes_no, where=f"syllogism[{i}]"))
    return items


# ------------------------------------------------------------------------------------------------
# SVAMP with PaLM 540B completions, read from ../shared/data
# ------------------------------------------------------------------------------------------------

SVAMP_STYLE = "PaLM 540B on SVAMP ('The answer is (<expression>).')"


def svamp_dir() -> Path:
    root = os.environ.get("MENTOR_SHARED_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return base / "svamp-palm"


def svamp_rows() -> list[dict] | None:
    """The 1,000 SVAMP rows with PaLM's completions (train then test), or None when absent."""
    folder = svamp_dir()
    if not all((folder / f"{split}.jsonl").is_file() for split in ("train", "test")):
        return None
    rows = []
    for split in ("train", "test"):
        with open(folder / f"{split}.jsonl", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


def is_correct(item: Item, parsed: Parsed) -> bool:
    """Parsed to exactly the expected answer; for an item that should be refused, refused."""
    if item.expected is None:
        return not parsed.ok
    return parsed.ok and parsed.label == item.expected


@dataclass
class StyleScore:
    style: str
    sources: list[str] = field(default_factory=list)
    items: int = 0
    correct: int = 0
    failures: list[tuple[Item, Parsed]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.correct / self.items if self.items else 0.0

    def failure_report(self, limit: int = 20) -> str:
        lines = [f"{self.style}: {self.correct}/{self.items} parsed as expected ({100 * self.rate:.1f}%)"]
        for item, parsed in self.failures[:limit]:
            got = repr(parsed.label) if parsed.ok else f"refused ({parsed.reason})"
            tail = " ".join(item.completion.split())[-140:]
            lines.append(f"  {item.where}: expected {item.expected!r}, got {got}; raw answer {parsed.raw_answer!r}\n"
                         f"      ...{tail!r}")
        if len(self.failures) > limit:
            lines.append(f"  ... and {len(self.failures) - limit} more")
        return "\n".join(lines)


def score(items: Iterable[Item]) -> dict[str, StyleScore]:
    """Per style (in first-seen order): items, how many parsed as expected, and the failures."""
    scores: dict[str, StyleScore] = {}
    for item in items:
        s = scores.setdefault(item.style, StyleScore(item.style))
        src = short_source(item.source)
        if src not in s.sources:
            s.sources.append(src)
        parsed = item.parse()
        s.items += 1
        if is_correct(item, parsed):
            s.correct += 1
        else:
            s.failures.append((item, parsed))
    return scores
