"""Customer-support prompts written for the PPO benchmarks, and their system prompt.

Plain data with no project imports, so the TRL worker (its own environment) can import it too.
"""

PROMPTS = [
    "My order arrived damaged. What should I do?",
    "How do I reset my password?",
    "Can I get a refund for a late delivery?",
    "The app crashes every time I log in.",
    "Where is my package? It was due yesterday.",
    "I was charged twice for the same order.",
    "How do I change my shipping address?",
    "Do you ship to Canada?",
    "My discount code is not working.",
    "How long do returns take to process?",
    "I want to cancel my subscription.",
    "Can I speak to a manager?",
    "The product I received is not what I ordered.",
    "How do I update my payment method?",
    "Is there a warranty on this item?",
    "My account was locked after too many attempts.",
]
SYSTEM = "You are a helpful, friendly customer-support assistant. Answer briefly."
