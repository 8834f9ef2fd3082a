"""Experiments on synthetic videos that test the method itself, not the user's training job.

``sanity``: the temporal sanity benchmark on the random-weight replica; ``miniature``: the paper's
Tables 3-5 on our own tiny image LLM. Both build their data, train with ``redvillm.train`` and
score with ``redvillm.evaluate.forced_choice``; ``cli`` is their command line.
"""
