"""Task-level evaluation of students, teachers and prompting baselines on one test set.

Each result carries task metrics (accuracy, F1, ROUGE-L as the task calls for), latency per
example, tokens generated per example and parameter count, so that a student and its teacher
are compared on what users pay for, not only on loss.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from mentor.tasks.answers import parse_completion
from mentor.tasks.labels import normalize_answer
from mentor.tasks.metrics import score

log = logging.getLogger("mentor")


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
        return main_metric(self.metrics)


def golds_of(rows: list[dict], answer_field: str) -> list[str]:
    return [str(r.get(answer_field, "")) for r in rows]


def main_metric(metrics: dict) -> tuple[str, float]:
    """The one number a task is judged by: a grader's mean reward where one graded it, else accuracy
    (choice accuracy), else F1, else ROUGE-L."""
    for key in ("reward_mean", "accuracy", "choice_accuracy", "f1", "rouge_l"):
        if key in metrics:
            return key, metrics[key]
    return "n", float(metrics.get("n", 0))


def label_of(text: str, task: str, row: dict, labels: list[str] | None) -> str | None:
    """A label-task answer, normalised for the task (a math expression is evaluated)."""
    label, _ = normalize_answer(text.strip(), task, row.get("choices"), labels)
    return label


def evaluate_student(model_ref, rows: list[dict], task: str, answer_field: str = "output_text",
                     labels: list[str] | None = None, with_rationale: bool = False, label_max_new_tokens: int = 48,
                     rationale_max_new_tokens: int = 256, batch_size: int = 8, name: str = "student") -> EvalResult:
    """Greedy answers of a tuned model. Step-by-step students answer the label task alone (cheap)
    unless `with_rationale`: then the student writes its rationale first and the label is the answer
    that closes it (students trained with `rationale_format="rationale+label"` end it with one); the
    label task answers only where no answer could be read from the rationale. `model_ref` is a
    model reference or an already loaded `Predictor`."""
    from mentor.serving.predict import Predictor

    predictor = model_ref if isinstance(model_ref, Predictor) else Predictor(model_ref)
    inputs = [r["input_text"] for r in rows]
    tok = predictor.tokenizer
    start = time.perf_counter()
    preds: list[str | None] = [None] * len(rows)
    outputs: list[str | None] = [None] * len(rows)
    rationales: list[str] | None = None
    if with_rationale and predictor.rationale_prefix is None:
        log.warning("%s was not trained to give a rationale (it is no step-by-step student): answering the label "
                    "task only", name)
    if with_rationale and predictor.rationale_prefix is not None:
        rationales = predictor.generate([predictor.render(x, predictor.rationale_prefix) for x in inputs],
                                        max_new_tokens=rationale_max_new_tokens, batch_size=batch_size, progress=True)
        for i, (row, text) in enumerate(zip(rows, rationales)):
            parsed = parse_completion(text, task, choices=row.get("choices"), labels=labels)
            preds[i] = parsed.label if parsed.ok else None
    todo = [i for i, p in enumerate(preds) if p is None]
    answers = predictor.generate([predictor.render(inputs[i]) for i in todo], max_new_tokens=label_max_new_tokens,
                                 batch_size=batch_size, progress=True) if todo else []
    for i, out in zip(todo, answers):
        outputs[i] = out
        preds[i] = label_of(out, task, rows[i], labels)
    seconds = time.perf_counter() - start
    generated = [len(tok(o, add_special_tokens=False).input_ids) for o in answers]
    generated += [len(tok(r, add_special_tokens=False).input_ids) for r in rationales or []]
    metrics = score(preds, golds_of(rows, answer_field), task, labels=labels,
                    choices=[r.get("choices") for r in rows] if task == "choice" else None)
    if rationales is not None:
        metrics["answered_from_rationale"] = (len(rows) - len(todo)) / len(rows)
    params = predictor.parameters
    records = [{"input_text": r["input_text"], "prediction": o, "label": p, "gold": r.get(answer_field)}
               for r, o, p in zip(rows, outputs, preds)]
    for rec, rat in zip(records, rationales or []):
        rec["rationale"] = rat
    return EvalResult(name, metrics, seconds / len(rows), sum(generated) / len(rows), params, records)


def evaluate_completions(completions: list[str], rows: list[dict], task: str, answer_field: str = "output_text",
                         labels: list[str] | None = None, name: str = "teacher", seconds_per_example: float | None = None,
                         tokens_per_example: float | None = None, parameters: int | None = None,
                         fields: tuple[str, ...] = ()) -> EvalResult:
    """Score chain-of-thought completions (a teacher's, or a prompted model's) by their parsed answers;
    ``fields``: the input field labels of the prompt's few-shot format, where a run-on starts."""
    parsed = [parse_completion(c, task, choices=r.get("choices"), labels=labels, fields=fields)
              for c, r in zip(completions, rows)]
    preds = [p.label if p.ok else None for p in parsed]
    metrics = score(preds, golds_of(rows, answer_field), task, labels=labels,
                    choices=[r.get("choices") for r in rows] if task == "choice" else None)
    records = [{"input_text": r["input_text"], "prediction": c, "label": p, "gold": r.get(answer_field)}
               for r, c, p in zip(rows, completions, preds)]
    return EvalResult(name, metrics, seconds_per_example, tokens_per_example, parameters, records)


def evaluate_prompting(model_ref: str, rows: list[dict], task: str, answer_field: str = "output_text",
                       shots=None, labels: list[str] | None = None, max_new_tokens: int = 256,
                       batch_size: int = 8, name: str | None = None) -> EvalResult:
    """The prompt-engineering baseline: the untuned model with few-shot chain-of-thought prompts."""
    from mentor.serving.predict import Predictor
    from mentor.serving.stop import apply_stop
    from mentor.tasks.prompts import PromptTemplate

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
                                seconds / len(rows), tokens, predictor.parameters, fields=template.input_fields)
