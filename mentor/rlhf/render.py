"""Prompt and answer texts as every preference stage sees them.

Prompts are rendered once, by mentor, exactly as `mentor predict` renders them (the chat
template when the model has one), and handed to TRL as plain text; so the reward model,
the policy while it learns, and the tuned model at inference all see the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mentor.data.encode import adds_bos, render_prompt
from mentor.rlhf.data import Prompt


@dataclass
class Renderer:
    """Prompt and answer texts as every stage sees them, clipped to the token limits."""

    tokenizer: object
    use_chat_template: bool
    instruction: str | None
    max_prompt_tokens: int
    max_answer_tokens: int
    counts: dict = field(default_factory=lambda: {"prompts": 0, "truncated_prompts": 0, "answers": 0, "truncated_answers": 0})
    conversations: int = 0  # chat prompts: without a chat template the model learns "user: ... assistant: "

    @property
    def prompt_format(self) -> str:
        """How a plain prompt is rendered for this model without a chat template: as it learned."""
        return "chat" if self.conversations else "text"

    def __post_init__(self):
        # The tokenizer adds a BOS itself: drop the one a chat template writes, or it would be doubled.
        self.adds_bos = adds_bos(self.tokenizer)

    @classmethod
    def for_model(cls, tokenizer, chat_template: str, instruction, max_prompt_tokens: int, max_answer_tokens: int):
        use = chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
        return cls(tokenizer, use, instruction, max_prompt_tokens, max_answer_tokens)

    def prompt(self, p: Prompt) -> str:
        p = p.with_instruction(self.instruction)
        text = render_prompt(p.messages, self.tokenizer, self.use_chat_template, p.kind)
        self.conversations += p.kind == "chat"
        return self.clip_prompt(text)

    def clip_prompt(self, text: str) -> str:
        """A rendered prompt as the trainer gets it: without a BOS the tokenizer adds again, its end kept
        within the prompt limit."""
        if self.adds_bos and self.tokenizer.bos_token and text.startswith(self.tokenizer.bos_token):
            text = text[len(self.tokenizer.bos_token):]
        self.counts["prompts"] += 1
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > self.max_prompt_tokens:  # keep the end: the generation prompt must stay next to the answer
            self.counts["truncated_prompts"] += 1
            text = self.tokenizer.decode(ids[-self.max_prompt_tokens:])
        return text

    def answer(self, text: str) -> str:
        return self.kept_answer(text)[0]

    def kept_answer(self, text: str) -> tuple[str, bool]:
        """The answer as it is trained on and scored (its first tokens), and whether it was cut."""
        self.counts["answers"] += 1
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) <= self.max_answer_tokens:
            return text, False
        self.counts["truncated_answers"] += 1
        return self.tokenizer.decode(ids[: self.max_answer_tokens]), True

    def scored_ids(self, prompt_text: str, answer: str, finished: bool = True) -> list[int]:
        """What a reward model reads: a cut answer never ends with the end-of-turn token, in training
        as in RL, where an answer stopped by the length limit does not end with one either."""
        text, cut = self.kept_answer(answer)
        return self.sequence_ids(prompt_text, text, finished and not cut)

    def sequence_ids(self, prompt_text: str, answer_text: str, finished: bool = True) -> list[int]:
        """Token ids a reward model scores: prompt, answer, and the end-of-turn token when the answer ended."""
        eos = self.tokenizer.eos_token if finished and self.tokenizer.eos_token else ""
        return self.tokenizer(prompt_text + answer_text + eos).input_ids

    def summary(self) -> str:
        c = self.counts
        return (f"{c['prompts']} prompts, {c['truncated_prompts']} truncated; "
                f"{c['answers']} answers, {c['truncated_answers']} truncated")
