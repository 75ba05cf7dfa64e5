"""The released models, installed with the package as `text2brain.checkpoints`.

This folder is also where training runs write their checkpoints (not committed, not
installed); only the released model's files are package data (see pyproject.toml).
"""
