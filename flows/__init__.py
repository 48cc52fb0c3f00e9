"""Prefect orchestration: the ``retrain`` flow (thin tasks over the stage API and DVC stages), its
deployments, and the routing of training steps to a GPU work pool."""
