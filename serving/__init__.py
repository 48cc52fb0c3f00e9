"""The BentoML service that serves the champion policy and records every output and the feedback on it."""
