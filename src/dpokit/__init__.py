"""dpokit: align a local language model to human preferences with DPO, offline."""
from .offline import enforce_offline

enforce_offline()  # first, before any import below reaches transformers or datasets

from .api import load_preference_pairs, train
from .config import DPOConfig
from .types import PreferencePair

__all__ = ["DPOConfig", "PreferencePair", "load_preference_pairs", "train"]
__version__ = "0.1.0"
