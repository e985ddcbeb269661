"""Reward functions for tests, in the trl convention align uses (prompts, completions, **columns)."""


def letter_e_fraction(prompts, completions, **columns):
    """Share of the answer's characters that are the letter 'e': random text scores about 0.1, 'eeee' scores 1."""
    texts = [c[0]["content"] for c in completions]
    return [t.count("e") / max(len(t), 1) for t in texts]


def says_expected(prompts, completions, expected):
    """1 when the answer contains the row's `expected` column: a verifiable reward reading a dataset column."""
    return [float(str(e) in c[0]["content"]) for c, e in zip(completions, expected)]
