"""The load lab: ``python -m bench <scenario>`` (``python -m bench`` lists them)."""
