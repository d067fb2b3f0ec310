"""Logit distillation compares two distributions over one vocabulary: check that before training.

- Different vocabularies (different sizes, or the same size with different tokens) stop the job
  with an error naming both tokenizers and their sizes.
- The same vocabulary with output matrices of different heights (one model padded its embedding
  to a multiple of 64 or 128, say) is fine: the extra rows are padding beyond the last token, so
  both models' logits are cropped to the common width, and the log says so.

Only tokenizers and configs are read, so this runs before any weights are loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mentor.errors import MentorError

log = logging.getLogger("mentor")


@dataclass
class VocabCheck:
    width: int  # logits columns both models are cropped to
    teacher_rows: int
    student_rows: int
    tokenizer_size: int

    @property
    def cropped(self) -> bool:
        return self.teacher_rows != self.width or self.student_rows != self.width


def output_rows(config) -> int:
    """Height of a model's output (vocabulary) matrix, from its config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.vocab_size)


def _name(tokenizer, ref: str) -> str:
    path = getattr(tokenizer, "name_or_path", "") or ""
    return f"'{ref}'" + (f" ({type(tokenizer).__name__} from {path})" if path and path != ref else f" ({type(tokenizer).__name__})")


def check_vocabularies(teacher_tok, student_tok, teacher_rows: int, student_rows: int,
                       teacher_ref: str = "teacher", student_ref: str = "student", announce: bool = True) -> VocabCheck:
    """Raise MentorError unless teacher and student share a vocabulary; return the logits width to use."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    t_size, s_size = len(teacher_tok), len(student_tok)
    if t_size != s_size or t_vocab != s_vocab:
        if t_size == s_size:
            differ = sum(1 for tok, i in t_vocab.items() if s_vocab.get(tok) != i)
            detail = f"both have {t_size} tokens, but {differ} tokens have different ids"
        else:
            detail = f"teacher tokenizer has {t_size} tokens, student tokenizer has {s_size}"
        raise MentorError(
            f"white-box distillation (logits, features, relations) needs one vocabulary, and these differ: teacher tokenizer {_name(teacher_tok, teacher_ref)} "
            f"(size {t_size}) vs student tokenizer {_name(student_tok, student_ref)} (size {s_size}); {detail}. "
            "Pick a student from the teacher's family (same tokenizer), or use distilling step-by-step "
            "(`mentor distill`), which learns from the teacher's text instead of its logits.")
    for who, rows in (("teacher", teacher_rows), ("student", student_rows)):
        if rows < t_size:
            raise MentorError(f"the {who} model's output matrix has {rows} rows, fewer than its tokenizer's "
                              f"{t_size} tokens; the model and tokenizer do not belong together")
    width = min(teacher_rows, student_rows)
    check = VocabCheck(width=width, teacher_rows=teacher_rows, student_rows=student_rows, tokenizer_size=t_size)
    if check.cropped and announce:
        log.info(f"vocabulary: teacher and student share one tokenizer ({t_size} tokens); their output "
              f"matrices have {teacher_rows} and {student_rows} rows, so the rows past {width} are padding: "
              f"cropping both models' logits to the first {width} columns")
    return check


def peek(ref: str):
    """Tokenizer and config of a model reference, without loading its weights."""
    from transformers import AutoConfig, AutoTokenizer

    from mentor.models import resolve
    from mentor.models.resolve import prepare_tokenizer

    source = Path(resolve(ref))
    config_source = source
    if (source / "adapter_config.json").exists():  # a LoRA adapter: the architecture is its base model's
        base = json.loads((source / "adapter_config.json").read_text())["base_model_name_or_path"]
        meta = source / "mentor_base.json"
        base = json.loads(meta.read_text())["base_model"] if meta.exists() else base
        config_source = Path(resolve(base))
        tok_source = source if (source / "tokenizer_config.json").exists() else config_source
    else:
        tok_source = source
    try:
        config = AutoConfig.from_pretrained(str(config_source))
        tokenizer = AutoTokenizer.from_pretrained(str(tok_source))
    except OSError as err:
        raise MentorError(f"cannot read model '{ref}': {str(err).splitlines()[0][:200]}") from err
    prepare_tokenizer(tokenizer)
    return tokenizer, config
