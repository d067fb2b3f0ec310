"""Benchmark: how often `parse_completion` reads the answer, per chain-of-thought style.

Prints a markdown table (style, source, items, parsed correctly, rate) over the corpus in
tests/data/cot_corpus (published few-shot CoT exemplars, zero-shot-CoT outputs, GSM8K and MATH
solutions, common answer formats, completions that must be refused), reasoning-gym data generated
here, and the 1,000 PaLM 540B completions on SVAMP in ../shared/data. "Parsed correctly" is the
expected answer exactly (a refusal when the item should be refused); for SVAMP, whose completions
have no hand-checked reading, it is a numeric answer read at all, and the teacher's accuracy
against the gold answers is printed below the table.

    python bench/parse_rates.py [--failures] [--kojima-logs DIR]

--kojima-logs: a folder of Kojima et al.'s zero-shot-CoT logs (log/*_zero_shot_cot.log of
github.com/kojima-takeshi188/zero_shot_cot, 9,706 text-davinci-002 completions over 12 datasets)
adds a second table: how many answers were read, how many agree with the answer the authors'
own extraction took, and the teacher's accuracy.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cot_corpus import SVAMP_STYLE, load_corpus, reasoning_gym_items, score, svamp_dir, svamp_rows  # noqa: E402

from mentor.tasks.answers import parse_completion  # noqa: E402
from mentor.tasks.arithmetic import numbers_match, parse_number  # noqa: E402


def row(style: str, source: str, items: int, correct: int) -> str:
    rate = f"{100 * correct / items:.1f}%" if items else "-"
    return f"| {style} | {source} | {items} | {correct} | {rate} |"


def corpus_table(show_failures: bool) -> tuple[list[str], str]:
    lines = ["| style | source | items | parsed correctly | rate |", "|---|---|---:|---:|---:|"]
    failures = []
    total = correct = 0
    parts = [("corpus", load_corpus())]
    try:
        parts.append(("reasoning-gym", reasoning_gym_items()))
    except ImportError:
        lines.append(row("reasoning-gym (not installed)", "-", 0, 0))
    for _, items in parts:
        for s in score(items).values():
            lines.append(row(s.style, "; ".join(s.sources), s.items, s.correct))
            total, correct = total + s.items, correct + s.correct
            if s.failures and show_failures:
                failures.append(s.failure_report())
    note = ""
    rows = svamp_rows()
    if rows is None:
        lines.append(row(SVAMP_STYLE + f" (not found at {svamp_dir()})", "-", 0, 0))
    else:
        parsed = [parse_completion(r["teacher_completion"], "math") for r in rows]
        numeric = sum(p.ok and parse_number(p.label) is not None for p in parsed)
        right = sum(p.ok and numbers_match(p.label, r["output_text"]) for p, r in zip(parsed, rows))
        lines.append(row(SVAMP_STYLE, "Hsieh et al. 2023 (shared/data/svamp-palm); a numeric answer read", len(rows), numeric))
        total, correct = total + len(rows), correct + numeric
        note = (f"SVAMP PaLM 540B: teacher accuracy {right}/{len(rows)} ({100 * right / len(rows):.1f}%) of all "
                f"completions, {100 * right / max(numeric, 1):.1f}% of those read.")
    lines.append(row("**all**", "", total, correct))
    return lines + ([""] + failures if failures else []), note


# ------------------------------------------------------------------------------------------------
# Kojima et al.'s zero-shot-CoT logs (optional)
# ------------------------------------------------------------------------------------------------

_KOJIMA_TASKS = {"gsm8k": "math", "multiarith": "math", "svamp": "math", "singleeq": "math", "addsub": "math",
                 "aqua": "choice", "commonsensqa": "choice", "date_understanding": "choice", "shuffled_objects": "choice",
                 "strategyqa": "classify", "coin_flip": "classify", "last_letters": "extract"}
_KOJIMA_RECORD = re.compile(r"\d+st data\n1_th_sampling\nQ: (.*?)\nA: Let's think step by step\.(.*?)\npred_before :.*?"
                            r"\npred_after :(.*?)\npred_list.*?\nGT : (.*?)\n", re.DOTALL)


def _kojima_agree(task: str, label: str, theirs: str, choices: list[str] | None) -> bool:
    if task == "math":
        return numbers_match(label, theirs)
    if task == "choice":
        return bool(theirs) and choices is not None and ord(theirs[0]) - 65 < len(choices) and label == choices[ord(theirs[0]) - 65]
    return label.lower() == theirs.lower()


def kojima_table(folder: Path) -> list[str]:
    lines = ["| dataset | completions | answer read | rate | same answer as the authors' extraction | teacher accuracy |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, task in _KOJIMA_TASKS.items():
        path = folder / f"{name}_zero_shot_cot.log"
        if not path.is_file():
            continue
        n = read = agree = right = 0
        for question, completion, theirs, gold in _KOJIMA_RECORD.findall(path.read_text(encoding="utf-8")):
            choices = None
            m = re.search(r"Answer Choices: (.*)$", question, re.DOTALL)
            if m:
                choices = [c.strip().rstrip(".") if name == "shuffled_objects" else c.strip()
                           for c in re.split(r"\(([A-F])\)\s*", m.group(1))[2::2]]
            p = parse_completion(completion.lstrip(" "), task, choices=choices if task == "choice" else None,
                                 labels=["yes", "no"] if task == "classify" else None)
            n += 1
            if not p.ok:
                continue
            read += 1
            agree += _kojima_agree(task, p.label, theirs.strip(), choices)
            right += _kojima_agree(task, p.label, gold.strip(), choices)
        lines.append(f"| {name} | {n} | {read} | {100 * read / max(n, 1):.1f}% | {agree} | {100 * right / max(n, 1):.1f}% |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--failures", action="store_true", help="list the items that did not parse as expected")
    ap.add_argument("--kojima-logs", type=Path, help="folder with Kojima et al.'s *_zero_shot_cot.log files")
    args = ap.parse_args()
    lines, note = corpus_table(args.failures)
    print("\n".join(lines))
    if note:
        print("\n" + note)
    if args.kojima_logs:
        print("\n" + "\n".join(kojima_table(args.kojima_logs)))


if __name__ == "__main__":
    main()
