"""The shared data pipeline: split, text sampling and the Lightning data module."""

from text2brain.data.datamodule import TextMapDataModule
from text2brain.data.sampling import TextSampler
from text2brain.data.split import Split, SplitRule, load_or_make_split, make_split

__all__ = [
    "Split",
    "SplitRule",
    "TextMapDataModule",
    "TextSampler",
    "load_or_make_split",
    "make_split",
]
