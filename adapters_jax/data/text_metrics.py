"""Corpus-level text-generation metrics with several references per prediction (E2E NLG).

Each metric comes from a maintained library, called the way its documentation shows:
  * `bleu`: sacrebleu's `corpus_bleu` (13a tokenisation, case-sensitive), 0-100;
  * `nist`: nltk's `corpus_nist` (n = 5, as the E2E scripts), on whitespace tokens;
  * `rouge_l`: rouge-score's ROUGE-L F-measure, best over a prediction's references
    (`score_multi`), averaged over predictions, x 100. The E2E challenge's own script takes COCO's
    ROUGE-L (LCS precision and recall combined with beta 1.2), so values differ slightly;
  * `cider`: pycocoevalcap's `Cider` (CIDEr-D weights, corpus document frequencies).

METEOR is left out: nltk's needs the WordNet corpus (a download), and pycocoevalcap's runs a Java
jar with a paraphrase table (`meteor/data/paraphrase-en.gz`) that its wheel does not ship and
fetches from the network on first use. Neither runs offline.

Example:
  generation_metrics(['the cat sat'], [['the cat sat', 'a cat sat']])
  # {'bleu': ..., 'nist': ..., 'rouge_l': ..., 'cider': ...}
"""

from __future__ import annotations

from collections.abc import Sequence

METRIC_NAMES = ('bleu', 'nist', 'rouge_l', 'cider')


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} reference lists.')
  if not predictions:
    raise ValueError('No predictions to score.')
  empty = [i for i, refs in enumerate(references) if not refs]
  if empty:
    raise ValueError(f'Predictions {empty[:5]} have no reference.')


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """sacrebleu corpus BLEU (0-100); references may differ in number per prediction."""
  import sacrebleu

  _check(predictions, references)
  width = max(len(r) for r in references)
  # sacrebleu takes reference streams; a missing reference is None.
  streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
  return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def nist(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 5) -> float:
  """nltk corpus NIST with n-grams up to `n`, on whitespace tokens.

  An n-gram order no prediction reaches (short or empty generations) adds 0, as in mteval;
  nltk would divide by zero there.
  """
  from nltk.translate.nist_score import corpus_nist

  _check(predictions, references)
  hypotheses = [p.split() for p in predictions]
  reached = min(n, max(len(h) for h in hypotheses))
  if reached == 0:
    return 0.0
  return float(corpus_nist([[r.split() for r in refs] for refs in references], hypotheses,
                           n=reached))


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Mean over predictions of rouge-score's best ROUGE-L F-measure over references, x 100."""
  from rouge_score import rouge_scorer

  _check(predictions, references)
  scorer = rouge_scorer.RougeScorer(['rougeL'])
  scores = [scorer.score_multi(list(refs), pred)['rougeL'].fmeasure
            for pred, refs in zip(predictions, references, strict=True)]
  return 100.0 * sum(scores) / len(scores)


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """pycocoevalcap CIDEr-D over the corpus (needs more than one prediction to be informative:
  its document frequencies come from the references)."""
  from pycocoevalcap.cider.cider import Cider

  _check(predictions, references)
  gts = {i: list(refs) for i, refs in enumerate(references)}
  res = {i: [pred] for i, pred in enumerate(predictions)}
  score, _ = Cider().compute_score(gts, res)
  return float(score)


def generation_metrics(predictions: Sequence[str],
                       references: Sequence[Sequence[str]]) -> dict[str, float]:
  """Every metric of `METRIC_NAMES` on the corpus."""
  return {'bleu': bleu(predictions, references), 'nist': nist(predictions, references),
          'rouge_l': rouge_l(predictions, references), 'cider': cider(predictions, references)}
