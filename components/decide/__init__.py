"""Deciding: the evaluation, its statistics, the judges and the promotion gate."""
