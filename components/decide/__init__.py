"""Deciding: the evaluation, its statistics, the judges, the promotion gate and the tournament between candidates."""
