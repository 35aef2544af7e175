"""Training: the loop (`loop`) and its components: the DeepSpeed engine, checkpoints, the reference model,
the monitor, the export and the instruction-following evaluation around it."""
