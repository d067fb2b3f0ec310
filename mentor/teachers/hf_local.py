"""A local teacher: any model `load_model` loads, generating in batches with transformers.

Spec: `hf:REF` sends each prompt as one user message through the tokenizer's chat template (like
the `openai:` chat route; the raw prompt when the tokenizer has no template); `hf-completions:REF`
always sends the raw prompt. The model loads on first use, so a fully cached run never loads it.
For a local folder the identity carries a fingerprint of its files, so retraining the teacher in
place does not serve the old teacher's cached answers. Generation itself is
`mentor.serving.generate`, the path predictions take too.
"""

from __future__ import annotations

from mentor.errors import MentorError
from mentor.teachers.base import Completion, GenerationParams, OnAnswer, Teacher

ROUTES = {"hf": True, "hf-chat": True, "hf-completions": False}


class HFTeacher(Teacher):
    """Batched `model.generate` on a local model; greedy or sampled as the params say."""

    def __init__(self, ref: str, chat: bool = True, cache=None, batch_size: int = 8, progress: bool | None = None):
        # imported late: it pulls in torch
        from mentor.serving.generate import model_fingerprint
        from mentor.serving.pool import Servable
        from mentor.serving.predict import reward_model_refusal

        # a scorer loaded as a language model would generate through its score head: refused, as
        # Predictor refuses it, before anything loads or a cached answer is served
        if Servable.of(ref).is_reward_model:
            raise MentorError(reward_model_refusal(ref))
        scheme = "hf" if chat else "hf-completions"
        super().__init__(f"{scheme}:{ref}{model_fingerprint(ref)}", cache=cache, progress=progress)
        self.ref, self.chat, self.batch_size = ref, chat, max(1, batch_size)
        self._loaded = None

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> HFTeacher:
        scheme, _, ref = spec.partition(":")
        if scheme not in ROUTES or not ref:
            raise MentorError(f"not a local teacher spec: {spec!r}; write hf:MODEL_REF (e.g. hf:smollm2-135m)")
        return cls(ref, chat=ROUTES[scheme], **kwargs)

    @property
    def loaded(self):
        """The model, loaded on first need (the generation path pads causal batches on the left)."""
        if self._loaded is None:
            from mentor.models import load_model

            loaded = load_model(self.ref)
            if loaded.tokenizer.pad_token is None:
                loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
            loaded.model.eval()
            self._loaded = loaded
        return self._loaded

    @property
    def templated(self) -> bool:
        """Whether prompts go through the chat template (which writes its own special tokens)."""
        return bool(self.chat and getattr(self.loaded.tokenizer, "chat_template", None))

    def format(self, prompt: str) -> str:
        """The text the model sees for a prompt."""
        if self.templated:
            messages = [{"role": "user", "content": prompt}]
            return self.loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    def _answer(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        from mentor.serving.generate import SamplingParams, generate_stream

        # top_k=0: sample like an OpenAI-compatible server does, not with transformers' default top_k=50
        sampling = SamplingParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                  top_p=params.top_p, top_k=0, stop=tuple(params.stop or ()), n=params.n)
        rendered = [self.format(p) for p in prompts]
        # a raw prompt gets the tokenizer's usual special tokens; similar lengths batch together
        for index, outputs in generate_stream(self.loaded, rendered, sampling, batch_size=self.batch_size,
                                              add_special_tokens=not self.templated, sort_by_length=True):
            self.stats.add(calls=1)
            on_answer(prompts[index], [Completion(o.text, o.prompt_tokens, o.completion_tokens, finish_reason=o.finish_reason)
                                         for o in outputs])
        return {}
