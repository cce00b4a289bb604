"""Small helpers shared across honed."""
