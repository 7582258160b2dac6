"""The converter's core under its earlier name: everything here is :mod:`se_weights`'s (which
:mod:`se_convert` re-exports). ``convert_file`` sits above both twins: import it from
:mod:`se_convert`.

>>> from se_flax.convert import torch_to_flax, flax_to_torch
"""

from se_weights import *  # noqa: F403
from se_weights import __all__  # noqa: F401
