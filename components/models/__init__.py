"""The models: base model loading, generation, precision, the reward model and the policy optimisers."""
