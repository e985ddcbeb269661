"""align's own PPO (trl 1.16 has none), in one place: `steps.py` is the stage (`run`, a loop over numbered steps),
`arithmetic.py` the per-token maths (KL-penalised rewards, GAE, clipped losses, KL controllers), `checkpoints.py`
its checkpoint files, `ranks.py` what the processes of an `accelerate launch` run must agree on."""
