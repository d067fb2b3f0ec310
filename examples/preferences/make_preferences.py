"""Make preference data from arithmetic problems, and score a model's answers to them.

Problems come from reasoning-gym's `chain_sum` task (`pip install reasoning-gym`). For each one:

- chosen:   a correct worked answer, one step at a time ("55 + 98 = 153, 153 - 93 = 60. The answer is 60.")
- rejected: the same working with one slip in one step (a digit, a carry, a sign), carried through
            to a wrong final answer; every rejected answer is checked to be wrong by reasoning-gym.

Writes, into --out:

    preferences.jsonl       training pairs, in the cloud format {input_text, candidate_0, candidate_1, choice}
                            (or {prompt, chosen, rejected} with --format trl)
    eval_preferences.jsonl  held-out pairs (reward-model accuracy, DPO margins)
    prompts.jsonl           prompts for the reinforcement-learning stage {input_text}
    eval_prompts.jsonl      held-out prompts, with the reference "answer" for scoring
    sft.jsonl               correct worked answers {input_text, output_text}, to teach the format first

Score a model afterwards (the share of held-out prompts answered correctly):

    mentor predict OUTPUT --input data/eval_prompts.jsonl --output preds.jsonl
    python examples/preferences/make_preferences.py --score preds.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

INSTRUCTION = "Work it out step by step, then give the final answer."


def problems(n: int, seed: int, max_terms: int, max_digits: int) -> list[dict]:
    """n distinct problems (a question never appears in two splits)."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset("chain_sum", size=3 * n, seed=seed, min_terms=2, max_terms=max_terms,
                                      min_digits=1, max_digits=max_digits)
    seen, out = set(), []
    for x in ds:
        if x["question"] not in seen:
            seen.add(x["question"])
            out.append(dict(x))
    if len(out) < n:
        raise SystemExit(f"only {len(out)} distinct problems with these limits; raise --max-terms or --max-digits")
    return out[:n]


def terms(expression: str) -> tuple[list[int], list[str]]:
    tokens = expression.split()
    return [int(t) for t in tokens[0::2]], tokens[1::2]


def worked(numbers: list[int], ops: list[str], slip_at: int | None = None, rng: random.Random | None = None) -> tuple[str, int]:
    """Left-to-right working; with slip_at, that step's result is wrong and the error is carried on."""
    total, steps = numbers[0], []
    for i, (op, n) in enumerate(zip(ops, numbers[1:])):
        result = total + n if op == "+" else total - n
        if i == slip_at:
            result = slip(total, op, n, result, rng)
        steps.append(f"{total} {op} {n} = {result}")
        total = result
    return ", ".join(steps) + f". The answer is {total}.", total


def slip(a: int, op: str, b: int, right: int, rng: random.Random) -> int:
    """A mistake people make: off by one or ten (a carry), or the other operation."""
    choices = [right + 1, right - 1, right + 10, right - 10, a - b if op == "+" else a + b]
    wrong = [c for c in choices if c != right]
    return rng.choice(wrong)


def final_number(text: str) -> str | None:
    found = re.findall(r"answer is\s*(-?\d+)", text) or re.findall(r"-?\d+", text)
    return found[-1] if found else None


def pair(item: dict, rng: random.Random, fmt: str, i: int, checker) -> dict | None:
    numbers, ops = terms(item["metadata"]["expression"])
    good, good_total = worked(numbers, ops)
    bad, bad_total = worked(numbers, ops, slip_at=rng.randrange(len(ops)), rng=rng)
    if checker.score_answer(str(good_total), item) != 1.0 or checker.score_answer(str(bad_total), item) == 1.0:
        return None  # never emit a pair whose labels are not what they claim
    prompt = item["question"]
    if fmt == "trl":
        return {"prompt": prompt, "chosen": good, "rejected": bad}
    choice = i % 2  # the preferred answer is candidate_0 or candidate_1, alternately
    return {"input_text": prompt, "candidate_0": good if choice == 0 else bad,
            "candidate_1": bad if choice == 0 else good, "choice": choice}


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows):5d} rows to {path}")


def make(out: Path, n_train: int, n_eval: int, n_prompts: int, n_eval_prompts: int, seed: int, fmt: str,
         max_terms: int, max_digits: int) -> None:
    import reasoning_gym

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    checker = reasoning_gym.create_dataset("chain_sum", size=1, seed=0)  # reasoning-gym's own answer check
    total = n_train + n_eval + n_prompts + n_eval_prompts
    items = problems(total, seed, max_terms, max_digits)
    train, rest = items[:n_train], items[n_train:]
    evals, rest = rest[:n_eval], rest[n_eval:]
    prompts, eval_prompts = rest[:n_prompts], rest[n_prompts:]
    write(out / "preferences.jsonl", [p for i, x in enumerate(train) if (p := pair(x, rng, fmt, i, checker))])
    write(out / "eval_preferences.jsonl", [p for i, x in enumerate(evals) if (p := pair(x, rng, fmt, i, checker))])
    write(out / "prompts.jsonl", [{"input_text": x["question"]} for x in prompts])
    write(out / "eval_prompts.jsonl", [{"input_text": x["question"], "answer": x["answer"]} for x in eval_prompts])
    write(out / "sft.jsonl", [{"input_text": x["question"], "output_text": worked(*terms(x["metadata"]["expression"]))[0]}
                              for x in train])
    print(f"suggested instruction (optional): {INSTRUCTION!r}")


def score(predictions: Path) -> float:
    rows = [json.loads(l) for l in predictions.read_text().splitlines() if l.strip()]
    right = sum(final_number(r.get("prediction", "")) == str(r["answer"]).strip() for r in rows)
    print(f"{right} of {len(rows)} answers correct ({right / max(len(rows), 1):.1%})")
    return right / max(len(rows), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/arithmetic-preferences", help="folder to write")
    ap.add_argument("--train", type=int, default=400, help="training pairs")
    ap.add_argument("--eval", type=int, default=40, help="held-out pairs")
    ap.add_argument("--prompts", type=int, default=200, help="RL prompts")
    ap.add_argument("--eval-prompts", type=int, default=40, help="held-out prompts")
    ap.add_argument("--format", choices=["cloud", "trl"], default="cloud")
    ap.add_argument("--max-terms", type=int, default=3)
    ap.add_argument("--max-digits", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", type=Path, help="score a predictions JSONL (from `mentor predict --input`) instead")
    args = ap.parse_args()
    if args.score:
        score(args.score)
    else:
        make(Path(args.out), args.train, args.eval, args.prompts, args.eval_prompts, args.seed, args.format,
             args.max_terms, args.max_digits)


if __name__ == "__main__":
    main()
