"""Test-time alignment: textual-gradient persona optimization (no Ray in `loop.py`/`scoring.py`)."""
