"""Lambda entry points: each parses its event and calls plain domain code."""
