"""Builds the Cython codec and the worker's per-message modules; everything else is in
pyproject.toml.

Set CHARGEYARD_NO_EXT=1 to install without compiling (the pure-Python twins are used).
"""

import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def cimport_path() -> str:
    """A directory where Cython finds our .pxd files under their package names.

    A compiled module cimports another by its dotted name (``from chargeyard.core._codec
    cimport Codec``), and Cython looks for ``chargeyard/core/_codec.pxd``; the folders
    become ``chargeyard.*`` only through pyproject's package-dir. So the build mirrors that
    mapping for the compiler: ``build/cimport/chargeyard/{core,worker}`` link to the
    folders."""
    top = os.path.join(ROOT, "build", "cimport", "chargeyard")
    os.makedirs(top, exist_ok=True)
    open(os.path.join(top, "__init__.pxd"), "a").close()
    for package in ("core", "worker"):
        link, target = os.path.join(top, package), os.path.join(ROOT, package)
        if os.path.islink(link) and os.readlink(link) != target:  # a moved checkout
            os.remove(link)
        if not os.path.islink(link):
            os.symlink(target, link)
    return os.path.dirname(top)


ext_modules = []
if os.environ.get("CHARGEYARD_NO_EXT") != "1":
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [Extension("chargeyard.core._codec", ["core/_codec.pyx"]),
         # cimports picows' extension types: build against the exact picows it runs with
         Extension("chargeyard.worker._listener", ["worker/_listener.pyx"]),
         Extension("chargeyard.worker._writer", ["worker/_writer.pyx"]),
         Extension("chargeyard.store._walsync", ["store/_walsync.pyx"]),
         Extension("chargeyard.store._logrows", ["store/_logrows.pyx"]),
         Extension("chargeyard.worker.handlers._ocpp16", ["worker/handlers/_ocpp16.pyx"])],
        include_path=[cimport_path()],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
