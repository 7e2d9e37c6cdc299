"""The training engine: a short ``fit()`` loop, step functions, EMA, schedules, checkpoints."""
