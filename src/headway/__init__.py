"""Headway: inference gateway for LLM fleets."""

__version__ = "0.1.0"
