"""Prefect tasks: thin adapters over the core (retries, names, logging, artifacts).

Tasks take settings and ids, never clients or models, and open the store themselves,
so their inputs hash and pickle cleanly for any task runner.
"""
