"""Data validation and encoding: every bad line named, loss only on output tokens."""

import pytest

from conftest import write_jsonl
from mentor.data.encode import IGNORE, EncodeStats, encode
from mentor.data.formats import load_examples
from mentor.errors import DataValidationError, MentorError
from mentor.models import load_model


def problems_of(path):
    with pytest.raises(DataValidationError) as info:
        load_examples(path)
    return {(p.line, p.field): p.message for p in info.value.problems}, str(info.value)


def test_every_bad_line_is_reported_with_file_line_and_field(tmp_path):
    rows = [
        {"input_text": "fine", "output_text": "ok"},                                   # 1 ok
        '{"input_text": "broken"',                                                       # 2 invalid JSON
        {"input_text": "x"},                                                             # 3 missing output_text
        {"input_text": "", "output_text": "y"},                                          # 4 empty input_text
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},  # 5 unknown role
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},  # 6 order
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},  # 7 empty content
        {"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "assistant", "parts": [{"text": "b"}]}]},  # 8
        {"messages": [{"role": "user", "content": "a"}]},                                # 9 no assistant turn
        [1, 2],                                                                          # 10 not an object
        {"text": "what"},                                                                # 11 unknown format
        {"input_text": "a", "output_text": 5},                                           # 12 wrong type
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "system", "content": "late"}, {"role": "user", "content": "c"},
                      {"role": "assistant", "content": "d"}]},                             # 13 system not first
        '{"input_text": "2+2?", "output_text": "4", "output_text": "5"}',               # 14 key given twice
        '{"input_text": "x", "output_text": NaN}',                                      # 15 not JSON
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
         "input_text": "c", "output_text": "d"},                                         # 16 two formats
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    found, message = problems_of(path)
    assert set(found) == {
        (2, "(line)"), (3, "output_text"), (4, "input_text"), (5, "messages[1].role"), (6, "messages[0].role"),
        (7, "messages[1].content"), (8, "contents[1].role"), (9, "messages"), (10, "(line)"), (11, "(line)"),
        (12, "output_text"), (13, "messages[2].role"), (14, "output_text"), (15, "(line)"), (16, "input_text"),
    }
    assert "given twice" in found[(14, "output_text")] and "NaN is not a JSON number" in found[(15, "(line)")]
    assert "invalid JSON" in found[(2, "(line)")]
    assert "unknown role 'bot'" in found[(5, "messages[1].role")]
    assert "wrong turn order" in found[(6, "messages[0].role")]
    assert "must end with an assistant turn" in found[(9, "messages")]
    assert f"{path}:5: field 'messages[1].role'" in message
    assert message.startswith("15 problem(s)")


def test_problem_list_is_capped_but_counted(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "x"}] * 120)
    with pytest.raises(DataValidationError) as info:
        load_examples(path)
    assert info.value.total == 120 and len(info.value.problems) == 50
    assert "and 70 more" in str(info.value)


def test_limits_and_missing_files(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"input_text": "a", "output_text": "b"}] * 5)
    with pytest.raises(MentorError, match="5 examples, more than the maximum of 4"):
        load_examples(path, max_examples=4)
    with pytest.raises(MentorError, match="not found"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MentorError, match="empty"):
        load_examples(tmp_path / "empty.jsonl")


def test_chat_gemini_and_text_encode_alike_with_loss_on_outputs_only(tmp_path):
    rows = [
        {"input_text": "abc", "output_text": "bcd"},
        {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "bcd"}]},
        {"contents": [{"role": "user", "parts": [{"text": "ab"}, {"text": "c"}]}, {"role": "model", "parts": [{"text": "bcd"}]}]},
    ]
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    tok = load_model("tiny:llama").tokenizer
    encoded = [encode(ex, tok, is_seq2seq=False, use_chat_template=True, max_input_tokens=100, max_output_tokens=100) for ex in examples]
    assert encoded[0] == encoded[1] == encoded[2]
    labels = [t for t in encoded[0]["labels"] if t != IGNORE]
    assert tok.decode(labels) == "bcd<|im_end|>\n"


@pytest.mark.parametrize("weight", [None, 1, 0])
def test_multi_turn_chat_trains_on_every_assistant_turn_only(weight):
    """Every assistant turn is learnt, except one marked "weight": 0 (OpenAI's chat format)."""
    tok = load_model("tiny:llama").tokenizer
    from mentor.data.formats import parse_row

    first = {"role": "assistant", "content": "a1", **({"weight": weight} if weight is not None else {})}
    ex, problems = parse_row({"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"}, first,
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]})
    assert not problems
    enc = encode(ex, tok, is_seq2seq=False, use_chat_template=True, max_input_tokens=1000, max_output_tokens=1000)
    spans, cur = [], []
    for t, l in zip(enc["input_ids"], enc["labels"]):
        if l != IGNORE:
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    assert spans == (["a2<|im_end|>\n"] if weight == 0 else ["a1<|im_end|>\n", "a2<|im_end|>\n"])
    assert tok.decode(enc["input_ids"]) == tok.apply_chat_template(ex.messages, tokenize=False)
    for bad, where in [({**first, "weight": 2}, "messages[1].weight"), ({"role": "user", "content": "q", "weight": 0},
                                                                          "messages[1].weight")]:
        _, problems = parse_row({"messages": [{"role": "user", "content": "q1"}, bad,
                                              {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]})
        assert where in [f for f, _ in problems]
    _, problems = parse_row({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                                              "weight": 0}]})
    assert problems == [("messages[1].weight", "0 on the last assistant turn leaves nothing to learn from this row "
                                               "(weight 0 is for earlier turns)")]


def test_seq2seq_encoding_puts_prompt_in_encoder_and_answer_in_labels(tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", [{"input_text": "abc", "output_text": "bcd"}]))
    tok = load_model("tiny:t5").tokenizer
    stats = EncodeStats()
    enc = encode(examples[0], tok, is_seq2seq=True, use_chat_template=False, max_input_tokens=2, max_output_tokens=2, stats=stats)
    assert len(enc["input_ids"]) == 2 and len(enc["labels"]) == 2
    assert stats.truncated_inputs == 1 and stats.truncated_outputs == 1
    # the answer ends with eos even where the tokenizer does not append one (this byte tokenizer), or the
    # tuned model would never learn to stop
    full = encode(examples[0], tok, is_seq2seq=True, use_chat_template=False, max_input_tokens=50, max_output_tokens=50)
    assert tok.decode(full["labels"]) == "bcd" + tok.eos_token
    assert tok.decode(full["input_ids"]) == "abc"


def test_a_row_the_chat_template_refuses_is_named_by_file_and_line():
    from mentor.data.encode import encode
    from mentor.data.formats import Example
    from mentor.errors import DataValidationError
    from mentor.models import load_model

    tok = load_model("tiny:llama").tokenizer
    tok.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('system role not supported') }}" \
                        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    example = Example([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "hello"}], "chat", file="train.jsonl", line=3)
    with pytest.raises(DataValidationError, match="train.jsonl:3: field 'messages': cannot be encoded: system role"):
        encode(example, tok, is_seq2seq=False, use_chat_template=True, max_input_tokens=64, max_output_tokens=64)


@pytest.mark.parametrize("template_writes_bos", [False, True])
@pytest.mark.parametrize("use_chat_template", [False, True])
def test_training_and_inference_give_a_prompt_one_bos_alike(use_chat_template, template_writes_bos):
    """A tokenizer that adds its BOS (Llama 2, Mistral) and a chat template that writes one (Llama 3,
    Gemma): the prompt has exactly one BOS, the same in training and at inference."""
    from tokenizers.processors import TemplateProcessing

    from mentor.data.encode import IGNORE, encode, render_prompt
    from mentor.data.formats import Example
    from mentor.models import load_model
    from mentor.serving.generate import SamplingParams, generate

    loaded = load_model("tiny:llama")
    tok = loaded.tokenizer
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                       special_tokens=[(tok.bos_token, bos)])
    if template_writes_bos:
        tok.chat_template = "{{ bos_token }}" + tok.chat_template
    messages = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "bcd"}]
    row = encode(Example(messages, "text"), tok, is_seq2seq=False, use_chat_template=use_chat_template,
                 max_input_tokens=64, max_output_tokens=64)
    prompt_ids = [t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE]
    assert prompt_ids[0] == bos and bos not in prompt_ids[1:]
    prompt = render_prompt(messages[:1], tok, use_chat_template, "text")
    [[out]] = generate(loaded, [prompt], SamplingParams(max_new_tokens=1))
    assert out.prompt_tokens == len(prompt_ids)


def test_rows_read_numbers_as_answers_and_conversations_as_the_chat_api_does(tmp_path):
    from mentor.data.formats import prompt_messages
    from mentor.data.rows import read_rows

    rows = read_rows(write_jsonl(tmp_path / "r.jsonl", [{"input_text": "2 + 2?", "output_text": 4},
                                                        {"input_text": "1 / 2?", "output_text": 0.5}]))
    assert [r["output_text"] for r in rows] == ["4", "0.5"]  # as math datasets write their answers
    # a final assistant turn is the reference (even an empty one), "developer" is "system", parts join
    msgs, problems = prompt_messages([{"role": "developer", "content": "be brief"},
                                      {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                      {"role": "assistant", "content": ""}])
    assert (msgs, problems) == ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], [])
    assert prompt_messages([{"role": "user", "content": 5}])[1] == [("messages[0].content", "must be a string, got int")]
