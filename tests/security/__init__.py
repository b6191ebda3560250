"""Attacks on the service: floods, guessing, and what must hold during them."""
