"""Where answers come from: OpenAI-compatible servers (cached, bounded requests), local generation
with transformers or vLLM behind the same chat interface, and the append-only logs they write."""
