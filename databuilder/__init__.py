"""databuilder."""
