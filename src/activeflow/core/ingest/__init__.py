"""New images in: sources to list them, ingest to store and catalogue them."""
