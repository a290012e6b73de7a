"""The engine: what every algorithm shares (training loop, evaluation, prediction, runs)."""
