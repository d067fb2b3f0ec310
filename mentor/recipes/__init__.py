"""The built-in job kinds, each registered once: name, config, run function.

A recipe is a module with `run(config, job) -> TunedModel`, readable top to bottom as
setup / train / save; recipes import components (training, distill, whitebox, rlhf, ...) and
never each other. Registering here loads only the configs (pydantic), never the recipes, so the
command line starts fast; a recipe module is imported when its job runs.
"""

from mentor.distill.config import CONFIGS as DISTILL_CONFIGS
from mentor.jobs.registry import JobKind, register_kind
from mentor.onpolicy.config import OnPolicyConfig
from mentor.recipes.batch_config import BatchConfig
from mentor.reinforce.config import ReinforceConfig
from mentor.rlhf.config import DPOConfig, RewardModelConfig, RLHFConfig
from mentor.training.config import TuneConfig
from mentor.whitebox.config import CONFIGS as WHITEBOX_CONFIGS

DISTILL_SUMMARIES = {
    "step-by-step": "distilling step-by-step: teacher rationales + labels, a multi-task student that answers alone",
    "standard": "standard distillation: the student learns the teacher's labels",
    "finetune": "the fine-tuning baseline: the student learns the gold labels",
}

register_kind(JobKind("tune", TuneConfig, "mentor.recipes.tune:run", "supervised tuning (full or LoRA) on text or "
                      "chat data", family="tune", method="supervised"))
register_kind(JobKind("dpo", DPOConfig, "mentor.recipes.dpo:run", "DPO: preference tuning without a reward model",
                      family="tune", method="dpo"))
register_kind(JobKind("reward-model", RewardModelConfig, "mentor.recipes.reward_model:run",
                      "a reward model trained on preference pairs", produces="reward-model"))
register_kind(JobKind("rlhf", RLHFConfig, "mentor.recipes.rlhf:run",
                      "RLHF: a reward model, then reinforcement learning with a KL penalty"))
register_kind(JobKind("reinforcement", ReinforceConfig, "mentor.recipes.reinforce:run",
                      "reinforcement fine-tuning: GRPO with a grader's scores of the model's own answers as rewards"))
for _name, _config in DISTILL_CONFIGS.items():
    register_kind(JobKind(_name, _config, "mentor.recipes.distill:run", DISTILL_SUMMARIES[_name], family="distill",
                          method=_name))
for _name, _config in WHITEBOX_CONFIGS.items():
    # a white-box method's config is its own class, naming its summary and the class of its loss
    register_kind(JobKind(_name, _config, "mentor.recipes.whitebox:run", _config.summary, family="distill",
                          method=_name))
register_kind(JobKind("on-policy", OnPolicyConfig, "mentor.recipes.onpolicy:run",
                      "on-policy distillation: the teacher scores the student's own samples token by token (GKD)",
                      family="distill", method="on-policy"))
register_kind(JobKind("batch", BatchConfig, "mentor.recipes.batch:run",
                      "batch prediction: every request line of a JSONL file answered (OpenAI's batch API)",
                      produces="predictions"))
