"""Files ``rlhf init`` writes into a new project (package data): the pipeline ``dvc.yaml``."""
