"""What makes a big model fit: each switch reaches the model and the trainer, and the memory
estimate made before any weights load refuses, in one line, a job that does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import mentor
from conftest import write_jsonl
from mentor.errors import MentorError
from mentor.recipes import tune as tune_recipe
from mentor.training import memory
from mentor.training import setup as training_setup


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("memory")
    return write_jsonl(d / "train.jsonl", [{"input_text": f"say {i}", "output_text": f"{i} {i}"} for i in range(16)])


@pytest.fixture
def trainers(monkeypatch):
    """The trainer each tuning job trained with."""
    seen = []
    real = tune_recipe.train

    def train(trainer, job, *args, **kwargs):
        seen.append(trainer)
        return real(trainer, job, *args, **kwargs)

    monkeypatch.setattr(tune_recipe, "train", train)
    return seen


def _tune(data, out, **fields):
    return mentor.tune(model="tiny:llama", data=str(data), output=str(out), train_steps=2, batch_size=4, **fields)


def test_gradient_checkpointing_on_reaches_the_model_and_off_or_auto_leave_it_off(data, tmp_path, trainers):
    result = _tune(data, tmp_path / "on", gradient_checkpointing="on")
    assert trainers[-1].model.is_gradient_checkpointing and trainers[-1].args.activation_checkpointing
    assert result.extra["memory"]["gradient_checkpointing"] is True
    _tune(data, tmp_path / "auto")  # a tiny model fits anywhere: auto leaves it off (a third faster)
    assert not trainers[-1].model.is_gradient_checkpointing


def test_auto_turns_checkpointing_on_when_only_it_makes_the_job_fit(data, tmp_path, trainers, monkeypatch):
    # free memory between what the job needs with and without checkpointing
    shape = memory.shape_of(mentor.models.model_config("tiny:llama"), None)
    setting = memory.Setting("full", "none", "adamw_torch", False, rows=4, tokens=2048, weight_bytes=4,
                             activation_bytes=4)
    without = memory.estimate(shape, setting).needed
    with_it = memory.estimate(shape, memory.Setting(**{**setting.__dict__, "gradient_checkpointing": True})).needed
    assert with_it < without
    monkeypatch.setattr(memory, "device_memory", lambda: ("cpu", (with_it + without) / 2, 0.0))
    rows = [{"input_text": "x" * 3000, "output_text": "y" * 900}] * 4
    result = mentor.tune(model="tiny:llama", data=str(write_jsonl(tmp_path / "long.jsonl", rows)),
                         output=str(tmp_path / "o"), tuning="full", train_steps=1, batch_size=4, max_input_tokens=3100,
                         max_output_tokens=900, bf16="off")
    assert trainers[-1].model.is_gradient_checkpointing
    assert result.extra["memory"]["gradient_checkpointing"] is True
    assert "gradient checkpointing turned on" in result.extra["memory"]["notes"][0]


def test_dora_trains_and_rank_alpha_dropout_reach_the_adapter(data, tmp_path, trainers):
    result = _tune(data, tmp_path / "dora", lora_variant="dora", adapter_size=32, lora_alpha=24, lora_dropout=0.1)
    cfg = json.loads((Path(result.model_path) / "adapter_config.json").read_text())
    assert (cfg["use_dora"], cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (True, 32, 24, 0.1)
    assert result.steps_run == 2
    weights = load_file(str(Path(result.model_path) / "adapter_model.safetensors"))
    assert any("lora_magnitude_vector" in k for k in weights)  # DoRA's magnitudes, trained and saved
    assert all(w.shape[0] == 32 for k, w in weights.items() if "lora_A" in k)
    # the default alpha is still twice the rank
    plain = _tune(data, tmp_path / "plain", adapter_size=5)
    assert json.loads((Path(plain.model_path) / "adapter_config.json").read_text())["lora_alpha"] == 10


def test_the_optimizer_reaches_the_trainer(data, tmp_path, trainers):
    _tune(data, tmp_path / "adafactor", optimizer="adafactor")
    assert trainers[-1].args.optim == "adafactor"
    assert type(trainers[-1].optimizer.optimizer if hasattr(trainers[-1].optimizer, "optimizer")
                else trainers[-1].optimizer).__name__ == "Adafactor"


def test_4bit_is_lora_only_and_a_quantized_base_trains(data, tmp_path, trainers):
    with pytest.raises(MentorError, match="quantization 4bit .* use tuning lora"):
        _tune(data, tmp_path / "full", tuning="full", quantization="4bit")
    pytest.importorskip("bitsandbytes")
    result = _tune(data, tmp_path / "qlora", quantization="4bit", optimizer="paged_adamw_8bit")
    base = trainers[-1].model.get_base_model()
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert base.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert base.config.quantization_config.bnb_4bit_use_double_quant is True
    assert result.steps_run == 2 and result.metrics["train_total_loss"] == result.metrics["train_total_loss"]


def test_quantization_is_refused_in_one_line_where_bitsandbytes_cannot_run(data, tmp_path, monkeypatch):
    from mentor.models import quantize

    monkeypatch.setattr(quantize, "bitsandbytes_problem", lambda: "bitsandbytes is not installed: pip install x")
    loads = []
    monkeypatch.setattr(training_setup, "load_model", lambda *a, **k: loads.append(a))
    for fields in ({"quantization": "8bit"}, {"optimizer": "adamw_8bit"}):
        with pytest.raises(MentorError) as err:
            _tune(data, tmp_path / next(iter(fields.values())), **fields)
        assert "needs bitsandbytes on CUDA" in str(err.value) and "\n" not in str(err.value)
    assert not loads


def test_a_job_that_does_not_fit_is_refused_before_any_weights_load(data, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda: ("cpu", 1024.0**2, 0.0))  # 1 MiB free
    loads = []
    monkeypatch.setattr(training_setup, "load_model", lambda *a, **k: loads.append(a))
    with pytest.raises(MentorError) as err:
        _tune(data, tmp_path / "o", tuning="full")
    message = str(err.value)
    assert "\n" not in message and not loads
    assert message.startswith("the job does not fit: full tuning of tiny:llama needs about")
    assert "GiB short" in message and "1.0 GiB" not in message
    assert "use a smaller model" in message  # nothing fits in 1 MiB, and it says so


def test_the_refusal_names_the_switch_that_makes_it_fit(monkeypatch):
    shape = memory.shape_of(mentor.models.model_config("random:llama-1b"), None)
    full = memory.Setting("full", "none", "adamw_torch", False, rows=2, tokens=256, weight_bytes=4, activation_bytes=4)
    lora_need = memory.estimate(shape, memory.Setting(**{**full.__dict__, "tuning": "lora"})).needed
    monkeypatch.setattr(memory, "device_memory", lambda: ("cpu", lora_need * 1.5, 0.0))
    with pytest.raises(MentorError, match=r"short; it fits with --tuning lora \(about"):
        memory.plan(shape, full, "auto", "random:llama-1b")
    assert shape.parameters == 1_235_814_400  # Llama 3.2 1B's count, from a meta-device model


def test_the_estimate_is_within_a_factor_of_the_measured_peak(tmp_path):
    """A 7M-parameter Llama, full tuning and LoRA, in a fresh process each (its peak is its own)."""
    script = f"""
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, LlamaConfig
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import write_jsonl
from mentor.models.tiny import byte_tokenizer
import mentor
folder = Path({str(tmp_path / "mid")!r})
tok = byte_tokenizer()
config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                     eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
if not (folder / "config.json").exists():
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
rows = [{{"input_text": "x" * 150 + str(i), "output_text": "y" * 100}} for i in range(16)]
data = write_jsonl(folder.parent / "long.jsonl", rows)
r = mentor.tune(model=str(folder), data=str(data), output=str(folder.parent / sys.argv[1]), tuning=sys.argv[1],
                train_steps=2, batch_size=8, bf16="off")
print(json.dumps(r.extra["memory"]))
"""
    for tuning in ("full", "lora"):
        out = subprocess.run([sys.executable, "-c", script, tuning], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        m = json.loads(out.stdout.strip().splitlines()[-1])
        estimated, measured = m["total_gib"] - m["process_gib"], m["measured_peak_gib"] - m["process_gib"]
        # measured on this 2-core CPU: 0.71 (full) and 1.0 (LoRA) of the peak; the README states 1.5
        assert measured / 2 < estimated < measured * 2, (tuning, m)


def test_preference_kinds_take_the_same_switches(tmp_path, monkeypatch):
    """DPO and the reward model train on a 4-bit base with DoRA, checkpointing and another optimizer."""
    pytest.importorskip("bitsandbytes")
    from mentor.recipes import dpo as dpo_recipe
    from mentor.recipes import reward_model as reward_recipe

    seen = []
    for recipe in (dpo_recipe, reward_recipe):
        monkeypatch.setattr(recipe, "train", lambda trainer, job, *a, _real=recipe.train, **k: (
            seen.append(trainer), _real(trainer, job, *a, **k))[1])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"answer {i}", "chosen": "yes", "rejected": "no"}
                                                   for i in range(8)])
    switches = dict(tuning="lora", quantization="4bit", lora_variant="dora", adapter_size=6, lora_alpha=3,
                    gradient_checkpointing="on", optimizer="adafactor", batch_size=4)
    result = mentor.dpo(model="tiny:llama", data=str(pairs), output=str(tmp_path / "dpo"), train_steps=2, **switches)
    adapter = json.loads((Path(result.model_path) / "adapter_config.json").read_text())
    assert (adapter["use_dora"], adapter["r"], adapter["lora_alpha"]) == (True, 6, 3)
    assert result.steps_run == 2 and result.extra["memory"]["gradient_checkpointing"] is True
    rm = mentor.reward_model(model="tiny:llama", preference_dataset=str(pairs), output=str(tmp_path / "rm"),
                             reward_model_train_steps=1, **switches)
    assert rm.steps_run == 1 and rm.extra["memory"]["rows"] == 8  # a pair is two sequences
    for trainer in seen:
        assert trainer.args.activation_checkpointing and trainer.args.optim == "adafactor"
        assert "Linear4bit" in {type(m).__name__ for m in trainer.model.modules()}


def test_compile_liger_and_sdpa_reach_the_trainer_and_the_model(tmp_path, monkeypatch):
    from mentor.models import load_model
    from mentor.training import arguments
    from mentor.training.arguments import liger_available, training_arguments
    from mentor.training.config import TuneConfig

    cfg = TuneConfig(model="tiny:llama", data="d", output="o", torch_compile=True)
    args = training_arguments(cfg, tmp_path, False, False)
    assert args.torch_compile and not args.activation_checkpointing
    # auto uses Liger where CUDA and liger-kernel are (as if they were here), never where they are not; off never
    for available, setting, used in ((True, "auto", True), (False, "auto", False), (True, "off", False)):
        monkeypatch.setattr(arguments, "liger_available", lambda available=available: available)
        liger = TuneConfig(model="tiny:llama", data="d", output="o", liger_kernel=setting)
        assert training_arguments(liger, tmp_path, False, False).use_liger_kernel is used, (available, setting)
    monkeypatch.undo()
    if not liger_available():
        with pytest.raises(MentorError, match="liger_kernel on needs a CUDA GPU and the liger-kernel package"):
            training_setup.check_switches(TuneConfig(model="tiny:llama", data="d", output="o", liger_kernel="on"))
    assert load_model("tiny:llama").model.config._attn_implementation == "sdpa"


def test_preference_jobs_are_estimated_at_their_datas_longest_pair_not_their_limits(tmp_path, monkeypatch):
    """DPO's limits (7168 + 1024 tokens) are no batch's length: TRL pads to the longest pair. An
    estimate at the limits refused the README's own DPO example on a 24 GiB machine (found by review)."""
    from mentor.rlhf import setup as rlhf_setup
    from mentor.rlhf.config import DPOConfig
    from mentor.rlhf.data import load_preferences

    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": "No."}
                                                        for i in range(8)])
    cfg = DPOConfig(model="tiny:llama", data=str(pairs_file), output=str(tmp_path / "o"), tuning="full")
    pairs = load_preferences(str(pairs_file), 100)
    limits = cfg.max_input_tokens + cfg.max_output_tokens
    monkeypatch.setattr(memory, "device_memory", lambda: ("cpu", 1024.0**4, 0.0))
    at_data = rlhf_setup.fit(cfg, 2, limits, weight_copies=1, pairs=pairs).estimate.needed
    at_limits = rlhf_setup.fit(cfg, 2, limits, weight_copies=1).estimate.needed
    monkeypatch.setattr(memory, "device_memory", lambda: ("cpu", (at_data + at_limits) / 2, 0.0))
    fitted = rlhf_setup.fit(cfg, 2, limits, weight_copies=1, pairs=pairs)
    assert fitted.estimate.tokens < 100  # the data's longest pair and a template's tokens, not 8192
    with pytest.raises(MentorError, match="does not fit"):  # at its limits it would not
        rlhf_setup.fit(cfg, 2, limits, weight_copies=1)


def test_logits_are_counted_where_they_are_computed():
    """Tuning computes vocabulary logits only where an output token is predicted: a long prompt with
    a short answer costs its layers' activations, not its vocabulary logits."""
    shape = memory.shape_of(mentor.models.model_config("random:llama-1b"), None)
    every = memory.Setting("lora", "none", "adamw_torch", True, rows=8, tokens=1024, weight_bytes=2, activation_bytes=2)
    at_outputs = memory.Setting(**{**every.__dict__, "logit_tokens": 16})
    saved = memory.estimate(shape, every).parts["activations"] - memory.estimate(shape, at_outputs).parts["activations"]
    assert saved == 3 * 8 * (1024 - 16) * shape.vocab * 4
    assert memory.estimate(shape, memory.Setting(**{**every.__dict__, "logit_tokens": 0})).parts["activations"] < \
        memory.estimate(shape, at_outputs).parts["activations"]


def test_the_longest_row_and_its_outputs_are_read_from_the_data(tmp_path):
    from types import SimpleNamespace

    from mentor.data.formats import load_examples

    long_prompt = write_jsonl(tmp_path / "d.jsonl", [{"input_text": "x" * 300, "output_text": "yes"}])
    student = SimpleNamespace(tokenizer=mentor.models.load_tokenizer("tiny:llama"), is_seq2seq=False,
                              use_chat_template=False, max_input_tokens=1024, max_output_tokens=1024)
    longest, outputs = training_setup.longest_encoded(load_examples(long_prompt), student)
    assert longest > 300 and outputs <= 5


def test_a_sharded_job_is_not_refused_for_what_one_unsharded_copy_needs(monkeypatch):
    """Under FSDP or ZeRO-3 each device holds a shard; the estimate counts a whole copy, so it warns."""
    shape = memory.shape_of(mentor.models.model_config("random:llama-1b"), None)
    full = memory.Setting("full", "none", "adamw_torch", False, rows=2, tokens=256, weight_bytes=2, activation_bytes=2)
    monkeypatch.setattr(memory, "device_memory", lambda: ("cuda:0", 4 * 1024.0**3, 0.0))
    with pytest.raises(MentorError, match="does not fit"):
        memory.plan(shape, full, "off", "random:llama-1b")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    planned = memory.plan(shape, full, "off", "random:llama-1b")
    assert any("runs sharded" in note for note in planned.notes)


def test_a_4bit_reward_model_trains_in_fp32_too(tmp_path):
    """Where training runs in fp32 (a CPU without native bf16, or bf16 off), TRL's cast of a quantized
    model's trainable weights to bf16 left the score head in bf16 against fp32 hidden states: the
    first step failed (seen on an AVX2-only CPU's path)."""
    pytest.importorskip("bitsandbytes")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"answer {i}", "chosen": "yes", "rejected": "no"}
                                                   for i in range(8)])
    result = mentor.reward_model(model="tiny:llama", preference_dataset=str(pairs), output=str(tmp_path / "rm"),
                                 reward_model_train_steps=1, batch_size=4, tuning="lora", quantization="4bit",
                                 bf16="off")
    assert result.steps_run == 1
