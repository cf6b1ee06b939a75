"""Example apps for the server, loaded with ``--app examples.<module>:<Class>``."""
