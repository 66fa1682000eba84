"""Command-line entry points: parse, validate, print. No logic of their own."""
