"""The ``blendmask-edu`` command line: parsing (``main``) apart from what it orchestrates."""
