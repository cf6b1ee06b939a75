"""Build hook: cythonize ``core/*.pyx`` (both ``pip install .`` and ``pip install -e .``)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("core.heartbeat_wheel", ["core/heartbeat_wheel.pyx"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
