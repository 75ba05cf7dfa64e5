"""text2brain: free-form neuroscience text <-> 3D brain activation maps."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`text2brain.load_predictor`, imported on first use so `import text2brain` stays light."""
    if name == "load_predictor":
        from text2brain.inference import load_predictor

        return load_predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
