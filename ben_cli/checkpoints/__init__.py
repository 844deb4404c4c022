"""Checkpoint reading, official-layout conversion, strict loading and saving."""
