"""Answers from OpenAI-compatible servers (`client`: cached, bounded requests), and the append-only
JSON-lines logs that survive a kill (`append_log`)."""
