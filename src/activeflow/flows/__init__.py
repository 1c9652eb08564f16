"""Prefect flows: compose tasks; no logic or I/O of their own."""
