"""Renderers: pure functions that draw task targets and recover what they drew (for verification)."""
