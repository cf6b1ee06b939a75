"""The lab kit: what the tests and the load lab (``bench/``) both need to drive a server.

- ``lab.server``: start a ``python -m supervisor`` tree, read its log, kill it by pid;
- ``lab.procfs``: /proc readings of processes and of the machine;
- ``lab.rawws``: one raw-socket WebSocket client on the server's own codec (``core.ws_codec``);
- ``lab.jsonproc``: the JSON-lines protocol between a scenario and its load processes;
- ``lab.crowd``: reconnecting players with numbered traffic, counted through a roll or a crash.

Not part of the installed wheel: it is run from a checkout, like ``tests/`` and ``bench/``.
"""
