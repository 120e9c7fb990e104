"""Package cluster."""
