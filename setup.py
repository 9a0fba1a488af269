"""Builds the Cython codec and the worker's per-message listener; everything else is in
pyproject.toml.

Set CHARGEYARD_NO_EXT=1 to install without compiling (the pure-Python twins are used).
"""

import os

from setuptools import setup

ext_modules = []
if os.environ.get("CHARGEYARD_NO_EXT") != "1":
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [Extension("chargeyard.core._codec", ["core/_codec.pyx"]),
         # cimports picows' extension types: build against the exact picows it runs with
         Extension("chargeyard.worker._listener", ["worker/_listener.pyx"]),
         Extension("chargeyard.store._walsync", ["store/_walsync.pyx"]),
         Extension("chargeyard.store._logrows", ["store/_logrows.pyx"]),
         Extension("chargeyard.worker._meter", ["worker/_meter.pyx"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
