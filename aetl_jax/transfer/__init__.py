"""Moving parameter trees between tasks: path rules, optimiser masks, strategies."""
