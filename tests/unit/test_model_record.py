"""A model folder's record (mentor_model.json): folders written before it was typed read and migrate,
a damaged one is one line naming the file, a written one reads back whole."""

from __future__ import annotations

import json

import pytest

from mentor.errors import MentorError
from mentor.model_record import RECORD_FILE, SCHEMA_VERSION, ModelRecord

# what the writers wrote before the record was typed, key for key
OLD_REWARD_MODEL = {"kind": "reward_model", "base_model": "tiny:llama", "tuning": "lora", "use_chat_template": True,
                    "instruction": "Reply briefly.", "prompt_sequence_length": 1984, "target_sequence_length": 64}
OLD_DISTILLED = {"base_model": "tiny:llama", "method": "step-by-step (lora)", "tuning": "lora",
                 "use_chat_template": False, "is_seq2seq": False, "prompt_format": "text", "max_input_tokens": 1024,
                 "task_prefix": "[label] ", "task": "math", "rationale_prefix": "[rationale] ",
                 "teacher": "recorded:field=teacher_completion", "distill_method": "step-by-step"}
OLD_START_MODEL = {"base_model": "tiny:llama", "merged_from": "/jobs/sft/model"}


def test_a_folder_written_before_the_record_was_typed_reads_and_migrates(tmp_path):
    (tmp_path / RECORD_FILE).write_text(json.dumps(OLD_REWARD_MODEL, indent=2))
    record = ModelRecord.read(tmp_path)
    assert record.schema_version == SCHEMA_VERSION and record.kind == "reward-model" and record.is_reward_model
    assert (record.instruction, record.prompt_sequence_length, record.target_sequence_length) == \
        ("Reply briefly.", 1984, 64)
    record.write(tmp_path)  # stored at the current version from then on
    stored = json.loads((tmp_path / RECORD_FILE).read_text())
    assert stored["schema_version"] == SCHEMA_VERSION and stored["kind"] == "reward-model"
    assert ModelRecord.read(tmp_path) == record

    for old in (OLD_DISTILLED, OLD_START_MODEL):
        (tmp_path / RECORD_FILE).write_text(json.dumps(old))
        record = ModelRecord.read(tmp_path)
        assert record.model_dump(include=set(old)) == old and record.kind is None and not record.is_reward_model
    # keys a folder lacks read as a model mentor knows nothing about is served
    assert (record.max_input_tokens, record.prompt_format, record.task_prefix, record.use_chat_template) == \
        (7168, "text", "", None)


def test_a_folder_without_a_record_reads_none(tmp_path):
    assert ModelRecord.read(tmp_path) is None and ModelRecord.read(tmp_path / "missing") is None
    assert not ModelRecord.exists(tmp_path)


@pytest.mark.parametrize("damage", [b'{"kind": "tune", "base_mo', b"\xff\xfe binary", b"[1, 2]",
                                    b'{"max_input_tokens": "many"}', b'{"tuning": "most"}'])
def test_a_damaged_record_is_one_line_naming_the_file(tmp_path, damage):
    (tmp_path / RECORD_FILE).write_bytes(damage)
    with pytest.raises(MentorError) as err:
        ModelRecord.read(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / RECORD_FILE} is damaged"), message


def test_a_written_record_reads_back_whole_and_leaves_no_temporary_file(tmp_path):
    record = ModelRecord(kind="dpo", base_model="tiny:llama", method="dpo (lora)", tuning="lora",
                         use_chat_template=True, prompt_format="chat", is_seq2seq=False, max_input_tokens=1024,
                         instruction="Reply briefly.")
    record.write(tmp_path)
    assert ModelRecord.read(tmp_path) == record and [p.name for p in tmp_path.iterdir()] == [RECORD_FILE]


def test_keys_a_newer_mentor_wrote_survive_a_rewrite(tmp_path):
    """merge_adapter and promote rewrite a record: what they do not know is kept, not stripped."""
    from mentor.model_record import ModelRecord

    ModelRecord(kind="tune", base_model="tiny:llama").write(tmp_path)
    raw = json.loads((tmp_path / "mentor_model.json").read_text())
    (tmp_path / "mentor_model.json").write_text(json.dumps({**raw, "from_the_future": {"x": 1}}))
    ModelRecord.read(tmp_path).write(tmp_path)
    assert json.loads((tmp_path / "mentor_model.json").read_text())["from_the_future"] == {"x": 1}
