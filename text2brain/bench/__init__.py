"""Benchmarks: `python -m text2brain.bench {render,...}` print their figures and the machine."""
