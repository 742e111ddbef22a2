"""The per-symbol workers (marketdata, orchestrator) and the executor, each a `trailingstop worker` role."""
