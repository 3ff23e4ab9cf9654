"""Clients of the Triton model that use only tritonclient (no torch, no backend_python)."""
