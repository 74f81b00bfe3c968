"""Pure objectives ``(params, batch, rng) -> (loss, aux)``."""
