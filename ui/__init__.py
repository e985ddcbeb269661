"""The web app (Gradio): preference labelling (`align label`), blind side-by-side votes (`align arena`) and chat
feedback (`align feedback`). Imports align; align never imports it."""

import os

# Gradio reports usage to its servers by default; labelling sessions should not talk to anyone but annotators.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
