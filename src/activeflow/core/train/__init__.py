"""Retraining and what follows it: the candidate and its gate, training history, stopping signals, monitoring, reports."""
