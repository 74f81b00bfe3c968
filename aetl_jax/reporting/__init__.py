"""Result tables (mean ± 95% CI over seeds) and figures."""
