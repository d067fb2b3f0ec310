"""The commands around jobs: predict with a model, label data with a teacher, evaluate models,
and look at or cancel a job in its folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mentor.errors import MentorError
from mentor.tasks import TASKS

log = logging.getLogger("mentor")


def cmd_predict(args) -> None:
    from mentor.serving.predict import Predictor, predict_file

    if args.input:
        if not args.output:
            raise MentorError("--input needs --output")
        dst = predict_file(args.model, args.input, args.output, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature)
        log.info("predictions written to %s", dst)
    elif args.text:
        predictor = Predictor(args.model)
        [(_, output)] = predictor.stream([predictor.render(args.text)], args.max_new_tokens, args.temperature)
        print(output.text.strip())
        if output.finish_reason == "length":
            log.warning("the answer reached --max-new-tokens (%d) before it ended", args.max_new_tokens)
        elif not output.text.strip():
            log.warning("the model answered nothing (it ended its answer at once)")
    else:
        raise MentorError("give a text to answer, or --input in.jsonl --output out.jsonl")


def cmd_score(args) -> None:
    """A reward model's score of each answer: one per line, or an output JSONL with a `score` field."""
    import json

    import mentor
    from mentor.data.formats import prompt_messages
    from mentor.files import atomic_file, check_output_path

    if args.input:
        if not args.output or args.prompt or args.response:
            raise MentorError("--input needs --output (and no --prompt or --response)")
        src, dst = Path(args.input).expanduser(), Path(args.output).expanduser()
        check_output_path(dst)
        rows, prompts = [], []
        for lineno, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise MentorError(f"{src}:{lineno}: not a JSON object") from None
            if not isinstance(row, dict) or not isinstance(row.get("response"), str):
                raise MentorError(f"{src}:{lineno}: field 'response': missing or not a text")
            messages, problems = prompt_messages(row["messages"]) if "messages" in row else (None, [])
            if isinstance(row.get("input_text"), str) and row["input_text"].strip():
                prompts.append(row["input_text"])
            elif messages:
                prompts.append(messages)
            else:
                detail = problems[0][1] if problems else "missing or empty (or give 'messages')"
                raise MentorError(f"{src}:{lineno}: field '{problems[0][0] if problems else 'input_text'}': {detail}")
            rows.append(row)
        scores = mentor.score(args.model, prompts, [r["response"] for r in rows], data_dir=args.data_dir)
        with atomic_file(dst) as f:
            for row, value in zip(rows, scores):
                f.write(json.dumps({**row, "score": value}, ensure_ascii=False) + "\n")
        log.info("%d scores written to %s", len(rows), dst)
    elif args.prompt is not None and args.response:
        for value in mentor.score(args.model, args.prompt, args.response, data_dir=args.data_dir):
            print(f"{value:.6g}")
    else:
        raise MentorError("give --prompt TEXT and --response TEXT (repeatable), or --input in.jsonl --output out.jsonl")


def cmd_label(args) -> None:
    from mentor.distill.label import label_file

    label_file(args.teacher, args.data, args.output, task=args.task, prompt_examples=args.prompt_examples,
               labels=_labels(args.labels), answer_field=args.answer_field, concurrency=args.teacher_concurrency,
               max_new_tokens=args.teacher_max_new_tokens, cache=args.teacher_cache)


def cmd_eval(args) -> None:
    from mentor.data.rows import read_rows
    from mentor.evaluation.evaluate import evaluate_prompting, evaluate_student
    from mentor.evaluation.report import write_report

    # a row without the gold answer would silently score 0: every row must have it (unless a grader scores)
    required = ("input_text",) if args.grader else ("input_text", args.answer_field)
    rows = read_rows(args.data, required=required, text=(args.answer_field,))
    rows = rows[: args.limit] if args.limit else rows
    grader = None
    if args.grader:  # refused before any model loads: checked against the first row
        from mentor.evaluation.graded import item_of
        from mentor.graders import build_grader
        from mentor.graders.files import load_grader

        grader = build_grader(load_grader(args.grader, item=item_of(rows[0])))
    lengths = {} if args.max_new_tokens is None else {"label_max_new_tokens": args.max_new_tokens,
                                                      "rationale_max_new_tokens": args.max_new_tokens}
    results = []
    for ref in args.model:
        if args.prompting == "none":
            results.append(evaluate_student(ref, rows, args.task, args.answer_field, _labels(args.labels),
                                            with_rationale=args.with_rationale, name=ref, **lengths))
        else:
            shots = [] if args.prompting == "zero-shot" else args.prompt_examples
            results.append(evaluate_prompting(ref, rows, args.task, args.answer_field, shots=shots,
                                              labels=_labels(args.labels), max_new_tokens=args.max_new_tokens or 256))
    if grader is not None:
        from mentor.evaluation.graded import add_grades

        with grader:
            for result in results:
                add_grades(result, rows, grader)
    out = Path(args.output)
    write_report(results, out, f"evaluation on {args.data}")


def cmd_status(args) -> None:
    from mentor.job_files import STATE_FILE
    from mentor.jobs import has_result, read_events, read_result
    from mentor.jobs.lifecycle import observed_state

    state = observed_state(args.folder)  # a damaged state file is one line naming it
    if not state:
        raise MentorError(f"{args.folder} holds no mentor job (no {STATE_FILE})")
    line = f"{state.get('kind')}: {state.get('state')}, step {state.get('step', 0)}/{state.get('total_steps', '?')}"
    if error := state.get("error"):
        line += f"\nerror: {error.get('message') if isinstance(error, dict) else error}"
    if state.get("state") == "succeeded" and has_result(args.folder):
        line += "\n" + read_result(args.folder).summary()
    print(line)
    for event in read_events(args.folder)[-args.events:] if args.events else []:
        fields = {k: v for k, v in event.items() if k not in ("time", "type", "message", "metrics", "level")
                  and isinstance(v, (str, int, float)) and v != ""}
        metrics = event.get("metrics") if isinstance(event.get("metrics"), dict) else {}
        detail = ", ".join(f"{k} {_short(v)}" for k, v in {**fields, **metrics}.items())
        print(f"{str(event.get('time', ''))[:19].replace('T', ' ')}  {str(event.get('type', '')):18} "
              f"{event.get('message', '')}{'  ' + detail if detail else ''}".rstrip())


def cmd_cancel(args) -> None:
    from mentor.jobs import request_cancel

    request_cancel(args.folder)
    log.info("asked the job in %s to stop at its next step; it keeps its last checkpoint", args.folder)


def _at_least(low: int):
    """An argparse type: an integer of `low` or more."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid int value" message
    return parse


_positive, _count = _at_least(1), _at_least(0)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _labels(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",")] if text else None


def register(sub) -> None:
    p = sub.add_parser("predict", help="answer a text, or a JSONL file of inputs (batch prediction)")
    p.add_argument("model", help="a mentor output folder or any model reference")
    p.add_argument("text", nargs="?")
    p.add_argument("--input", help="JSONL with input_text (or messages) per line")
    p.add_argument("--output", help="JSONL to write, each input row plus 'prediction'")
    p.add_argument("--max-new-tokens", type=_positive, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("score", help="a reward model's scores of answers (higher: preferred)")
    p.add_argument("model", help="a reward-model job folder, its model folder, or a registered name (ft:...)")
    p.add_argument("--prompt", help="the prompt the answers reply to")
    p.add_argument("--response", action="append", help="an answer to score (repeat for several)")
    p.add_argument("--input", help="JSONL with input_text (or messages) and response per line")
    p.add_argument("--output", help="JSONL to write, each input row plus 'score'")
    p.add_argument("--data-dir", help="the server's data folder, for a registered name (default MENTOR_SERVER_DATA_DIR "
                                      "or ~/.mentor/server)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("label", help="the teacher step alone: rationales and labels for a JSONL file")
    p.add_argument("--teacher", required=True, help="hf:REF, openai:MODEL@URL, recorded:FILE, recorded:field=NAME")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--task", default="math", choices=TASKS)
    p.add_argument("--prompt-examples", help="few-shot CoT examples JSONL: input, rationale, label")
    p.add_argument("--labels", help="comma-separated label set for classify/nli")
    p.add_argument("--answer-field", default="output_text")
    p.add_argument("--teacher-concurrency", type=_positive, default=8,
                   help="most teacher requests in flight at once; the number adapts below it, down to 1, to what the "
                        "server answers without queueing")
    p.add_argument("--teacher-max-new-tokens", type=_positive, default=256,
                   help="longest teacher completion; one cut off here is read only up to its last whole sentence")
    p.add_argument("--teacher-cache", help="SQLite file of the teacher's answers (default: teacher_cache.sqlite beside "
                                           "--output); share one with distill jobs and no prompt is paid for twice")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("eval", help="task metrics of models on a test set (report.md + report.png)")
    p.add_argument("model", nargs="+", help="mentor output folders or model references")
    p.add_argument("--data", required=True, help="test JSONL with input_text and the gold answer")
    p.add_argument("--task", default="math", choices=TASKS)
    p.add_argument("--answer-field", default="output_text")
    p.add_argument("--labels", help="comma-separated label set for classify/nli")
    p.add_argument("--prompting", default="none", choices=["none", "few-shot", "zero-shot"],
                   help="none: the model answers directly (tuned models); few-/zero-shot: chain-of-thought prompting "
                        "baseline")
    p.add_argument("--prompt-examples", help="few-shot examples JSONL (default: the task's built-in ones)")
    p.add_argument("--with-rationale", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--max-new-tokens", type=_positive, help="longest answer (default: 48 for a tuned model's label, "
                   "256 for a rationale or a prompting baseline)")
    p.add_argument("--limit", type=_positive, help="only the first N rows")
    p.add_argument("--grader", help="a grader's JSON file (OpenAI's grader shapes): each answer's reward too, "
                                    "reward_mean in the report (see `mentor grade`)")
    p.add_argument("--output", default="eval-report")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("status", help="a job's state and its latest events")
    p.add_argument("folder", help="the job's output folder")
    p.add_argument("--events", type=_count, default=10, help="how many of the latest events to show (0: none)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="stop a running job at its next step (it keeps its last checkpoint)")
    p.add_argument("folder", help="the job's output folder")
    p.set_defaults(func=cmd_cancel)
