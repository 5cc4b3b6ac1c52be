"""Robustness: a generated bad-input/fault corpus run against every command (issue 11)."""
