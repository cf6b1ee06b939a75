"""Build hook: cythonize the native parts - the heartbeat wheel and the WebSocket frame codec
(``core/``, sans-I/O) and the shard's reactor (``shards/``) - for both ``pip install .``
and ``pip install -e .``."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("core.heartbeat_wheel", ["core/heartbeat_wheel.pyx"], extra_compile_args=["-O2"]),
    Extension("core.ws_codec", ["core/ws_codec.pyx"], extra_compile_args=["-O2"]),
    Extension("shards.reactor", ["shards/reactor.pyx"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
