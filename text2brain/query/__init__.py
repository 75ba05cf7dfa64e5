"""`text2brain query`: brain maps for free-text queries, written as NIfTI files.

```bash
text2brain query "working memory" "move the tongue" --ckpt best.ckpt -o maps/ --png --html
text2brain query --queries-file queries.txt --ckpt best.ckpt -o maps/   # one query a line
text2brain query "working memory" --ckpt clip.ckpt --related -k 5   # nearest training articles
text2brain query --describe map.nii.gz --ckpt mnm.ckpt               # decode a map
```

`--related` and `--describe` (heads with a shared text-brain space: clip, mnm) print a
tab-separated table (query or map, rank, article_id, distance, title, keywords) on stdout.

Each query gives `<NNN>_<slug>.nii.gz` (the number keeps the input order and makes names
unique; the slug is the query, lowercased, other characters than a-z and 0-9 as "_", at most
60 characters), on request a glass-brain PNG and an interactive HTML viewer beside it, and
`queries.tsv` lists which file holds which query (slugs lose characters). Pictures are opt-in
because rendering takes far longer than predicting.

An output folder belongs to one run: a folder with a previous run's `queries.tsv` is refused
unless `--overwrite` (its listed files are deleted first) or `--append` (new maps numbered
after its own). Every file is written under a temporary name and renamed into place, and the
index is rewritten after every map, so an interrupted or failing run leaves whole maps that
its index lists.

The package's modules: `texts` (slugs, queries files, the checks before any map), `files`
(the output folder, its index, writing the maps), `pictures` (PNG and HTML) and `cli` (the
command). None imports anything heavy at import time: `text2brain --help` must stay instant.
"""

from text2brain.query.cli import query
from text2brain.query.files import FolderInUse, write_query_maps

__all__ = ["FolderInUse", "query", "write_query_maps"]
