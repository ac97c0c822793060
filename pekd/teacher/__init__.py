"""The teacher's signal: a frozen network run online, or features read from a precomputed bank."""
