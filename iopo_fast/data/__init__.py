"""Training data: sources on disk to token-id examples, prepared once and cached, mixed and ordered."""
