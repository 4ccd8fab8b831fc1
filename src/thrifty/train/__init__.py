"""``thrifty train``: data-parallel GPT training with communication-efficient strategies."""
