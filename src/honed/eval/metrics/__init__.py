"""Pure metric functions, each usable per sample and in aggregate.

Per-sample functions return a `SampleResult` (scores, or an `error` such as "empty
prediction"); aggregates skip such samples and count them. Optional dependencies (sacrebleu,
rouge-score, jieba, nltk) are imported only when a metric that needs them runs.
"""

from honed.eval.metrics._common import AggregateResult, SampleResult, aggregate
from honed.eval.metrics.classification import (
    AucResult,
    ClassificationResult,
    auc_roc,
    binary_auroc,
    classification_metrics,
    match_label,
)
from honed.eval.metrics.efficiency import latency_percentiles, tokens_per_second
from honed.eval.metrics.language import (
    chinese_share,
    detect_language,
    is_chinese,
    normalize_answer,
    word_tokens,
)
from honed.eval.metrics.loss import LossResult, loss_and_perplexity
from honed.eval.metrics.meteor import SynonymTable, corpus_meteor, meteor, meteor_tokens
from honed.eval.metrics.refusal import (
    RefusalDetector,
    RefusalMetrics,
    RefusalOutcome,
    evaluate_refusals,
    judge_refusal,
    refusal_metrics,
)
from honed.eval.metrics.stability import (
    StabilityResult,
    aggregate_stability,
    all_identical,
    answer_stability,
)
from honed.eval.metrics.text import (
    contains_reference,
    corpus_bleu,
    corpus_chrf,
    corpus_rouge,
    exact_match,
    rouge,
    sentence_bleu,
    sentence_chrf,
)

__all__ = [
    "AggregateResult", "AucResult", "ClassificationResult", "LossResult", "RefusalDetector",
    "RefusalMetrics", "RefusalOutcome", "SampleResult", "StabilityResult", "SynonymTable",
    "aggregate", "aggregate_stability", "all_identical", "answer_stability", "auc_roc",
    "binary_auroc", "chinese_share", "classification_metrics", "contains_reference",
    "corpus_bleu", "corpus_chrf", "corpus_meteor", "corpus_rouge", "detect_language",
    "evaluate_refusals", "exact_match", "is_chinese", "judge_refusal", "latency_percentiles",
    "loss_and_perplexity", "match_label", "meteor", "meteor_tokens", "normalize_answer",
    "refusal_metrics", "rouge", "sentence_bleu", "sentence_chrf", "tokens_per_second",
    "word_tokens",
]
