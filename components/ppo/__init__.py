"""PPO fine-tuning of the policy against a reward scorer (issue: PPO stage)."""
