"""Launching the bundled tritonserver."""
