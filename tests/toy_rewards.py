"""Reward functions for tests, in the trl convention align uses (prompts, completions, **columns)."""


def letter_e_fraction(prompts, completions, **columns):
    """Share of the answer's characters that are the letter 'e': random text scores about 0.1, 'eeee' scores 1."""
    texts = [c[0]["content"] for c in completions]
    return [t.count("e") / max(len(t), 1) for t in texts]


def says_expected(prompts, completions, expected):
    """1 when the answer contains the row's `expected` column: a verifiable reward reading a dataset column."""
    return [float(str(e) in c[0]["content"]) for c, e in zip(completions, expected)]


def answer_length(prompts, completions, **columns):
    """A proxy that rewards length alone (characters / 10): what a reward model that learned 'longer is better'
    would hand out."""
    return [len(c[0]["content"]) / 10 for c in completions]


def brevity(prompts, completions, **columns):
    """A gold judge that wants short answers: 1 for an empty answer, falling to 0 at 60 characters."""
    return [max(0.0, 1 - len(c[0]["content"]) / 60) for c in completions]


def letter_e_on_odd_prompts(prompts, completions, **columns):
    """letter_e_fraction where the prompt has an odd number of characters, its opposite where even: an opening
    of 'eee' is right on some prompts and wrong on others, as a decline is."""
    sign = [1 if len(p[-1]["content"] if isinstance(p, list) else p) % 2 else -1 for p in prompts]
    return [s * e for s, e in zip(sign, letter_e_fraction(prompts, completions))]


def e_labeller_on_odd_prompts(prompt, text_a, text_b, *, row, rng, noise=0.0):
    """A labeller (align/labeller.py's signature) wanting more e's where the prompt has an odd number of
    characters and fewer where even, as letter_e_on_odd_prompts; it refuses to judge without the prompt row's
    category, which queued items carry in `extra`."""
    if "category" not in row:
        raise AssertionError(f"the labeller got no prompt row for {prompt!r}: {row}")
    sign = 1 if len(prompt) % 2 else -1
    a, b = (sign * text.count("e") for text in (text_a, text_b))
    if a == b:
        return "tie", f"both {a}"
    choice = "A" if a > b else "B"
    if rng.random() < noise:
        return ("B" if choice == "A" else "A"), f"A {a}, B {b} (flipped: label noise)"
    return choice, f"A {a}, B {b}"
