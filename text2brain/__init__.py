"""text2brain: free-form neuroscience text <-> 3D brain activation maps."""

__version__ = "0.1.0"
