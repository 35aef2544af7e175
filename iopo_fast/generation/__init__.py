"""Local generation: a causal LM's responses to prompts rendered by its chat template, with the sampling
settings of `settings` and the backends of `generators` (transformers on rows that take the next prompt as one ends,
`row_decoding`, or vLLM's offline engine), and a local model behind the endpoints' chat interface
(`local_chat`)."""
