"""Data in: feedback rows and their validation, the prompt pool, the served-output store, raters."""
