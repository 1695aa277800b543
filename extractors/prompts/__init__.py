"""Versioned LLM prompts (package data)."""
