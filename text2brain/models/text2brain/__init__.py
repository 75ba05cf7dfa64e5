"""The Text2Brain regression head (Ngo et al., MICCAI 2021)."""

from text2brain.models.text2brain.lightning_model import Text2Brain
from text2brain.models.text2brain.torch_model import Text2BrainNet

__all__ = ["Text2Brain", "Text2BrainNet"]
