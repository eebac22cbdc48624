"""The FaaS pool: a pay-per-request GPU provider behind a small port (`provider`), its first
adapter (`runpod`), what its jobs cost (`billing`) and the per-task webhook secrets (`webhook`)."""
