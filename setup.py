"""Builds se_flax's CPU kernels (se_flax/_kernels/*.cc, XLA FFI handlers) next to the package;
everything else is in pyproject.toml. The kernels are loaded with ctypes, not imported.

A machine without a C++17 compiler still installs se-flax: the build is optional, and
se_flax.conv_general_dilated then runs XLA's grouped convolutions (``se_flax.kernels_built()``
says which). ``SE_FLAX_MARCH`` sets ``-march`` (default ``native``: the kernels are built for the
machine that installs them, with AVX-512 where it has it; ``x86-64-v3`` for AVX2 machines in
general, ``x86-64-v4`` for AVX-512 ones).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildKernels(build_ext):
    """build_ext with the XLA FFI headers of the jaxlib that builds them."""

    def build_extensions(self):
        import jaxlib  # a build requirement (pyproject.toml); jax.ffi.include_dir() is this

        headers = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        for ext in self.extensions:
            ext.include_dirs.append(headers)
        super().build_extensions()

    def get_export_symbols(self, ext):
        return []  # FFI handlers, not a Python module: no PyInit_ to export


march = os.environ.get("SE_FLAX_MARCH", "native")
kernels = Extension(
    "se_flax._grouped_conv_kernels",
    sources=["se_flax/_kernels/grouped_conv.cc"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O3", f"-march={march}", "-fvisibility=hidden", "-w"],
    optional=True,
)
setup(ext_modules=[kernels], cmdclass={"build_ext": BuildKernels})
