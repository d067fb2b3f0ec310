"""What mentor records beside the weights of every model folder it writes (`mentor_model.json`):
how the model was made and how to prompt it. This module is the file's only owner: writers build
a `ModelRecord` and `write` it, readers `read` one; nobody else names the file or picks defaults.

Light on purpose (pydantic only, no ML library), and low in the layers, so the command line, the
server, serving, training and the recipes can all use it.

Versions: 1 is every file written before the record was typed (no `schema_version`; a reward model
said kind "reward_model"); 2 adds `schema_version` and names kinds as the job kinds do. `read`
migrates a version-1 file as it reads it; the next `write` stores it at the current version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mentor.errors import MentorError
from mentor.files import atomic_write

RECORD_FILE = "mentor_model.json"
SCHEMA_VERSION = 2
REWARD_MODEL = "reward-model"  # the job kind (and so the registry's model kind) of a reward model

# kind spellings files of an earlier version carry -> the job kind's name
_OLD_KINDS = {"reward_model": REWARD_MODEL}


class ModelRecord(BaseModel):
    """A model folder's record. Every field is optional to a reader: a folder mentor did not make
    (a hub model, a hand-copied one) reads as `ModelRecord()`, whose defaults say how mentor serves
    a model it knows nothing about."""

    # a newer mentor's extra keys are not an error, and are kept when this one rewrites the record
    # (merge_adapter, promote): an older mentor must not strip what a newer one recorded
    model_config = ConfigDict(frozen=True, extra="allow")

    schema_version: int = Field(default=SCHEMA_VERSION, description="format of this file; read() migrates older ones")
    kind: str | None = Field(default=None, description="the job kind that made the model, as the kind registry names it "
                                               "('tune', 'dpo', 'reward-model', 'rlhf', 'step-by-step', 'logit', "
                                               "...); None when not recorded (folders of version 1 other than "
                                               "reward models)")
    base_model: str | None = Field(default=None, description="the reference of the model it was trained from, as the user "
                                                     "gave it")
    method: str | None = Field(default=None, description="how it was made, as the job's result says it ('supervised (lora)', "
                                                 "'dpo (lora)', 'distill-logit')")
    tuning: Literal["full", "lora"] | None = Field(default=None, description="all weights trained, or LoRA adapters (a "
                                                                     "reward model's are merged into the folder)")
    is_seq2seq: bool | None = Field(default=None, description="an encoder-decoder model")
    use_chat_template: bool | None = Field(default=None, description="prompts go through the tokenizer's chat template; "
                                                             "None: as the tokenizer has one")
    prompt_format: Literal["text", "chat"] = Field(default="text", description="how a plain prompt is rendered without a "
                                                                      "chat template: as the training data was ('chat': "
                                                                      "'user: ...\\nassistant: ')")
    max_input_tokens: int = Field(default=7168, gt=0, description="the longest prompt, in tokens, it was trained with (and "
                                                          "is served with)")
    instruction: str | None = Field(default=None, description="a line put before every prompt in training (preference "
                                                      "kinds), so put before every prompt served")
    task: str | None = Field(default=None, description="the task a distilled student was trained for")
    task_prefix: str = Field(default="", description="what starts a prompt asking a distilled step-by-step student for its "
                                             "label ('[label] ')")
    rationale_prefix: str | None = Field(default=None, description="what starts a prompt asking it for its rationale "
                                                           "('[rationale] '); None: it learned none")
    teacher: str | None = Field(default=None, description="the teacher a distilled student learned from")
    distill_method: str | None = Field(default=None, description="the distillation method ('step-by-step', 'standard', "
                                                         "'finetune')")
    reward_model: str | None = Field(default=None, description="the reward model folder an RLHF model was trained against")
    prompt_sequence_length: int = Field(default=512, gt=0, description="a reward model's longest prompt, in tokens")
    target_sequence_length: int = Field(default=64, gt=0, description="a reward model's longest answer, in tokens")
    merged_from: str | None = Field(default=None, description="the LoRA adapter folder merged into this full model")
    promoted_from: str | None = Field(default=None, description="the checkpoint folder this model was promoted from")

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data):
        """Version 1 (no schema_version) -> 2: kinds spelled as the job kinds are."""
        if not isinstance(data, dict) or data.get("schema_version") is not None:
            return data
        data = {**data, "schema_version": SCHEMA_VERSION}
        if data.get("kind") in _OLD_KINDS:
            data["kind"] = _OLD_KINDS[data["kind"]]
        return data

    @property
    def is_reward_model(self) -> bool:
        """A scorer (a sequence classifier with one output), never generated from."""
        return self.kind == REWARD_MODEL

    @staticmethod
    def path(folder: str | Path) -> Path:
        return Path(folder) / RECORD_FILE

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return cls.path(folder).is_file()

    @classmethod
    def read(cls, folder: str | Path) -> ModelRecord | None:
        """The record of a model folder, migrated to the current version; None when the folder has
        none (mentor did not make it). A file that is no record is a one-line MentorError naming it."""
        path = cls.path(folder)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # a hub id, a file: no folder of mentor's
            return None
        except OSError as err:
            raise MentorError(f"{path} cannot be read ({err.strerror or type(err).__name__})") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            why = f"field '{where}': {first['msg']}"
        except (UnicodeDecodeError, ValueError) as err:
            why = str(err).splitlines()[0][:200]
        raise MentorError(f"{path} is damaged (not the model record mentor writes: {why}); restore it, or delete it "
                          "to serve the folder as a plain model") from None

    def write(self, folder: str | Path) -> None:
        """Write the record into `folder` whole (a reader never sees half of it), at the current version."""
        atomic_write(self.path(folder), self.model_dump_json(indent=2))
