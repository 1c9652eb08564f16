"""Models and the informativeness of unlabelled images: networks, scoring shards, strategies, top-k selection."""
