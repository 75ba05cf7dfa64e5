"""Bridges to other neuroimaging tools; each needs an optional extra and imports it on use.

- `nimare` (`pip install "text2brain[nimare]"`): corpora as NiMARE Datasets and back, and
  coordinate-based meta-analyses (ALE, MKDA density) run by NiMARE.
- `meta`: the meta-analysis of the studies a model retrieves for a query
  (`Predictor.meta_analysis`, `text2brain query --meta-analysis`).

Nothing else in text2brain imports this package, and importing it imports no NiMARE.
"""
