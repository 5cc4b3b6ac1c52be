"""Datasets: folder layouts, paired loading, haze synthesis, procedural scenes.

Import the submodules you need; nothing here imports torch at import time.
"""
from edgehaze.data.layouts import DATASET_LAYOUTS, Pair, PairList, detect_layout, find_pairs

__all__ = ["DATASET_LAYOUTS", "Pair", "PairList", "detect_layout", "find_pairs"]
