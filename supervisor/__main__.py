"""``python -m supervisor --shards 8``: see ``--help``."""

from __future__ import annotations

import sys

import trio

from supervisor.arbiter import Supervisor
from supervisor.cli import config_from_args


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    return trio.run(Supervisor(config).run)


if __name__ == "__main__":
    sys.exit(main())
