"""Native load generators of the benchmarks, compiled on demand.

``echo_client()`` returns the path of ``echo_client.c`` (the closed-loop WebSocket client
of ``python -m bench echo``) compiled with the machine's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``). The binary is cached in ``bench/results/.build/`` under the hash of
the source and the compile command, so it is rebuilt only when either changes; a build
goes to a temporary file first and is renamed into place, so concurrent runs are safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "results" / ".build"
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra"]


class NativeBuildError(RuntimeError):
    """No C compiler, or the source did not compile."""


def compiler() -> str:
    """The C compiler to use: ``$CC`` (may carry flags), else the first of cc, gcc, clang."""
    env = os.environ.get("CC", "").strip()
    if env:
        return env
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise NativeBuildError(
        "the echo benchmark's load generator is C and no C compiler was found (looked for"
        " $CC, cc, gcc, clang): install one, e.g. `apt-get install gcc`"
    )


def build(name: str) -> Path:
    """``<name>.c`` of this directory compiled (cached by hash); the binary's path."""
    source = HERE / f"{name}.c"
    cc = shlex.split(compiler())
    if not shutil.which(cc[0]):
        raise NativeBuildError(f"C compiler {cc[0]!r} ($CC) not found")
    digest = hashlib.sha256(source.read_bytes())
    digest.update(" ".join([*cc, *CFLAGS]).encode())
    binary = BUILD / f"{name}-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    BUILD.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=BUILD)
    os.close(fd)
    try:
        done = subprocess.run(
            [*cc, *CFLAGS, "-o", tmp, str(source)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise NativeBuildError(
                f"compiling {source.name} failed ({shlex.join([*cc, *CFLAGS])}):\n"
                + (done.stderr or done.stdout).strip()[-2000:]
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    for old in BUILD.glob(f"{name}-*"):  # builds of older sources
        if old != binary:
            with contextlib.suppress(OSError):
                old.unlink()
    return binary


def echo_client() -> Path:
    """The compiled ``echo_client`` (see ``echo_client.c`` for its options and output)."""
    return build("echo_client")
