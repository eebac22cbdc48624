"""Routing: where each attempt of a job goes (`policy.decide`), by rules kept as data (`rules.toml`)."""
