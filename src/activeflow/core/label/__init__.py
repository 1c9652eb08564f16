"""Batches out to labellers and their labels back in: export, file formats, Label Studio, imports, drop folders."""
