"""Feedback data: schemas (``schema``), import/export (``io``), Great Expectations validation (``validation``),
the DVC-versioned store (``store``), pairs from ratings (``pairs``) and the stage config (``config``)."""
