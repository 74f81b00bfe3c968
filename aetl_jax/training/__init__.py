"""Pure train steps and the epoch runners that compile them."""
