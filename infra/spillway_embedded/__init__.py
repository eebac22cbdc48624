"""Run Spillway on one machine, with no AWS account, from the same template.yaml."""
