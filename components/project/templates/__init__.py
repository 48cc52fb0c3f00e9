"""Files ``rlhf init`` writes into a new project (package data): ``pipeline.yaml`` becomes its ``dvc.yaml``."""
