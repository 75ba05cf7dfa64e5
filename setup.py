"""Package discovery (the rest of the build configuration is in pyproject.toml).

Every package under text2brain/ is found, so a new subpackage needs no change here; the
repository's checkpoints/ folder is added as `text2brain.checkpoints`, a package of its own,
so the released model travels with the package (its files are package data, pyproject.toml).
The checkpoints that training runs write there, in checkpoints/<name>/, are not installed.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["text2brain", "text2brain.*"]), "text2brain.checkpoints"],
    package_dir={"text2brain.checkpoints": "checkpoints"},
)
