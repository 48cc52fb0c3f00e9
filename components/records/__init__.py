"""Records: the model registry, lineage and the code fingerprints of the stages."""
