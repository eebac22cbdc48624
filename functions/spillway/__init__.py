"""Spillway: GPU inference jobs across owned, rented and pay-per-request GPUs."""
