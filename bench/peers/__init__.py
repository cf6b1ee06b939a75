"""Peer echo servers for ``python -m bench echo``.

Each is run as ``python -m bench.peers.<name> --port 0``, binds 127.0.0.1, echoes every
text/binary frame back unchanged and prints ``ready port=P`` on stdout once listening.
"""
