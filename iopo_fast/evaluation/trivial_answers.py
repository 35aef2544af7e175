"""Answers that follow no instruction on purpose: a score is read beside what these score on the same prompts.

Kept apart from the evaluation runner, and importing nothing, so that the demo data builder
(`examples/make_demo_data.py`) can require every eval prompt to fail them without loading torch.
"""

GENERIC_ANSWER = ("Thank you for the question. Here is a clear and helpful answer: the main points are explained "
                  "in order, each with a short example, and a brief summary closes the answer.")
# Each answer's name and how it answers a prompt.
TRIVIAL_ANSWERS = {"empty": lambda prompt: "", "dot": lambda prompt: ".", "echo": lambda prompt: prompt,
                   "generic": lambda prompt: GENERIC_ANSWER}
