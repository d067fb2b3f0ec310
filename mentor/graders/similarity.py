"""String checks and text similarity, 0 to 1, by the libraries the metrics are defined by:
rapidfuzz (fuzzy_match: `fuzz.ratio` / 100, the normalized Indel similarity), NLTK (BLEU, GLEU,
METEOR) and Google's rouge-score (ROUGE-N, ROUGE-L F-measure)."""

from __future__ import annotations

from functools import lru_cache

ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_3": "rouge3", "rouge_4": "rouge4",
               "rouge_5": "rouge5", "rouge_l": "rougeL"}


def string_check(text: str, reference: str, operation: str) -> float:
    """eq and ne compare exactly; like: `reference` is in `text`; ilike: the same, ignoring case."""
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":
        return float(reference in text)
    if operation == "ilike":
        return float(reference.casefold() in text.casefold())
    raise ValueError(f"unknown operation {operation!r}")


@lru_cache(maxsize=1)
def has_wordnet() -> bool:
    """Whether NLTK finds its WordNet data (METEOR needs it, and it cannot be downloaded here)."""
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        return True
    except (ImportError, LookupError):
        return False


@lru_cache(maxsize=8)
def _rouge(kind: str):
    from rouge_score import rouge_scorer

    # stemmed, as mentor's ROUGE-L task metric is (mentor.tasks.metrics.rouge_l)
    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _tokens(text: str) -> list[str]:
    return text.split()


def similarity(text: str, reference: str, metric: str) -> float:
    """`text` against `reference` by `metric`, 0 to 1."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    if metric in ROUGE_TYPES:
        kind = ROUGE_TYPES[metric]
        return float(_rouge(kind).score(reference, text)[kind].fmeasure)
    if metric == "bleu":
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        hyp, ref = _tokens(text), _tokens(reference)
        if not hyp or not ref:
            return float(hyp == ref)
        # smoothed (Lin and Och's method 1): a short answer with no 4-gram in common is not a flat 0
        return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1))
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        hyp, ref = _tokens(text), _tokens(reference)
        if not hyp or not ref:
            return float(hyp == ref)
        return float(sentence_gleu([ref], hyp))
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score([_tokens(reference)], _tokens(text)))
    raise ValueError(f"no {metric!r} similarity here")
