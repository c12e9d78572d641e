"""logger."""
