"""The shipped recipes (YAML files, not code). This file makes the folder the package align.recipes, so the
recipes install with align and `align ls` finds them outside a checkout."""
