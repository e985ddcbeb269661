"""The labelling web app (Gradio): `align label`, `align arena`. Imports align; align never imports it."""

import os

# Gradio reports usage to its servers by default; labelling sessions should not talk to anyone but annotators.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
