"""The released models, installed with the package as `text2brain.checkpoints`.

This folder is also where training runs write their checkpoints (not committed, not
installed); only the released models' export folders are package data (see pyproject.toml;
text2brain.releases finds them by name).
"""
