"""The synthetic scene world: coloured solids and people rendered with every control map.

from cnet.synth import generate
sample = generate(seed=0, size=128)   # .image, .conditions["canny"], .prompt, .masks, ...
"""

from cnet.synth.sample import CONDITION_KEYS, Sample, generate
from cnet.synth.splits import SPLITS, split_seeds

__all__ = ["CONDITION_KEYS", "SPLITS", "Sample", "generate", "split_seeds"]
