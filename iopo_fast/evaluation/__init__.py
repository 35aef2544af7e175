"""Instruction-following evaluation (`iopo-fast eval`): benchmarks of prompts with program-checkable constraints, generation, verdicts and the report."""
