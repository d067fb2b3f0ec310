"""Task-level evaluation of students, teachers and prompting baselines on one test set.

Each result carries task metrics (accuracy, F1, ROUGE-L as the task calls for), latency per
example, tokens generated per example and parameter count, so that a student and its teacher
are compared on what users pay for, not only on loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mentor.distill.parsing import normalize_answer, parse_completion
from mentor.evaluation.metrics import score


@dataclass
class EvalResult:
    name: str
    metrics: dict
    seconds_per_example: float | None = None
    tokens_per_example: float | None = None
    parameters: int | None = None
    predictions: list = field(default_factory=list)

    @property
    def main_metric(self) -> tuple[str, float]:
        for key in ("accuracy", "choice_accuracy", "f1", "rouge_l"):
            if key in self.metrics:
                return key, self.metrics[key]
        return "n", float(self.metrics.get("n", 0))


def golds_of(rows: list[dict], answer_field: str) -> list[str]:
    return [str(r.get(answer_field, "")) for r in rows]


def _label_of(text: str, task: str, row: dict, labels: list[str] | None, parse_sentence: bool) -> str | None:
    """A prediction's label: a bare label is normalised; a rationale-style output is parsed."""
    if parse_sentence:
        parsed = parse_completion(text, task, choices=row.get("choices"), labels=labels)
        if parsed.ok:
            return parsed.label
    label, _ = normalize_answer(text.strip(), task, row.get("choices"), labels)
    return label


def evaluate_student(model_ref: str, rows: list[dict], task: str, answer_field: str = "output_text",
                     labels: list[str] | None = None, with_rationale: bool = False, label_max_new_tokens: int = 48,
                     rationale_max_new_tokens: int = 256, batch_size: int = 8, name: str = "student") -> EvalResult:
    """Greedy answers of a tuned model. Step-by-step students answer the label task alone unless
    `with_rationale`, where the rationale task runs first and the label comes after."""
    from mentor.serving.predict import Predictor

    predictor = Predictor(model_ref)
    inputs = [r["input_text"] for r in rows]
    tok = predictor.tokenizer
    start = time.perf_counter()
    rationale_outputs = None
    if with_rationale and predictor.rationale_prefix is not None:
        rationale_outputs = predictor.generate([predictor.render(x, predictor.rationale_prefix) for x in inputs],
                                               max_new_tokens=rationale_max_new_tokens, batch_size=batch_size, progress=True)
    outputs = predictor.generate([predictor.render(x) for x in inputs], max_new_tokens=label_max_new_tokens,
                                 batch_size=batch_size, progress=True)
    seconds = time.perf_counter() - start
    preds = []
    for i, (row, out) in enumerate(zip(rows, outputs)):
        label = _label_of(out, task, row, labels, parse_sentence=False)
        if label is None and rationale_outputs is not None:  # a label task that failed: use the rationale's answer
            label = _label_of(rationale_outputs[i], task, row, labels, parse_sentence=True)
        preds.append(label)
    generated = [len(tok(o, add_special_tokens=False).input_ids) for o in outputs]
    if rationale_outputs:
        generated = [g + len(tok(r, add_special_tokens=False).input_ids) for g, r in zip(generated, rationale_outputs)]
    metrics = score(preds, golds_of(rows, answer_field), task, choices=[r.get("choices") for r in rows] if task == "choice" else None)
    params = sum(p.numel() for p in predictor.model.parameters())
    records = [{"input_text": r["input_text"], "prediction": o, "label": p, "gold": r.get(answer_field)}
               for r, o, p in zip(rows, outputs, preds)]
    if rationale_outputs:
        for rec, rat in zip(records, rationale_outputs):
            rec["rationale"] = rat
    return EvalResult(name, metrics, seconds / len(rows), sum(generated) / len(rows), params, records)


def evaluate_completions(completions: list[str], rows: list[dict], task: str, answer_field: str = "output_text",
                         labels: list[str] | None = None, name: str = "teacher", seconds_per_example: float | None = None,
                         tokens_per_example: float | None = None, parameters: int | None = None) -> EvalResult:
    """Score chain-of-thought completions (a teacher's, or a prompted model's) by their parsed answers."""
    parsed = [parse_completion(c, task, choices=r.get("choices"), labels=labels) for c, r in zip(completions, rows)]
    preds = [p.label if p.ok else None for p in parsed]
    metrics = score(preds, golds_of(rows, answer_field), task, choices=[r.get("choices") for r in rows] if task == "choice" else None)
    records = [{"input_text": r["input_text"], "prediction": c, "label": p, "gold": r.get(answer_field)}
               for r, c, p in zip(rows, completions, preds)]
    return EvalResult(name, metrics, seconds_per_example, tokens_per_example, parameters, records)


def evaluate_prompting(model_ref: str, rows: list[dict], task: str, answer_field: str = "output_text",
                       shots=None, labels: list[str] | None = None, max_new_tokens: int = 256,
                       batch_size: int = 8, name: str | None = None) -> EvalResult:
    """The prompt-engineering baseline: the untuned model with few-shot chain-of-thought prompts."""
    from mentor.distill.prompts import PromptTemplate
    from mentor.serving.predict import Predictor
    from mentor.teachers import apply_stop

    template = PromptTemplate.for_task(task, shots=shots, labels=labels)
    predictor = Predictor(model_ref)
    prompts = [predictor.render(template.render(r["input_text"]), prefix="") for r in rows]
    start = time.perf_counter()
    outputs = predictor.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=True)
    seconds = time.perf_counter() - start
    outputs = [apply_stop(o, ["\nQ:", "\n\nQ:"]) for o in outputs]
    tokens = sum(len(predictor.tokenizer(o, add_special_tokens=False).input_ids) for o in outputs) / len(rows)
    kind = "zero-shot" if template.zero_shot else f"{len(template.shots)}-shot"
    return evaluate_completions(outputs, rows, task, answer_field, labels, name or f"{model_ref} ({kind} CoT prompting)",
                                seconds / len(rows), tokens, sum(p.numel() for p in predictor.model.parameters()))
