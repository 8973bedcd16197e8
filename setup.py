"""Declares the Cython extensions: sources in top-level _ext/, modules in fastscp._ext."""
from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = ["framer", "writer", "header", "sockio", "bloom"]

setup(
    ext_modules=cythonize(
        [
            Extension(f"fastscp._ext.{name}", [f"_ext/{name}.pyx"], extra_compile_args=["-O2"])
            for name in EXTENSIONS
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
