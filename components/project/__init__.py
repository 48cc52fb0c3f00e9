"""A project on disk: scaffolding (`rlhf init`), paths, params loading, the DVC runner, templates."""
