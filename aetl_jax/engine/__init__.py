"""The training engine: pure step, launchers, epoch runners, phases, the one driver, checkpoints."""
