"""``make bench``: the performance bench (see bench/__main__.py)."""
