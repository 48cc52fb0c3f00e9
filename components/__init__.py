"""rlhf-loop components: all the logic of the loop. Imports neither Prefect nor BentoML."""

__version__ = "0.1.0"
