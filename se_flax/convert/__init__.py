"""The weight converter under its earlier name: everything here is :mod:`se_convert`'s.

>>> from se_flax.convert import torch_to_flax, flax_to_torch, convert_file
"""

from se_convert import *  # noqa: F403
from se_convert import __all__  # noqa: F401
