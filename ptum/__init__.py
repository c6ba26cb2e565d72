"""PTUM user models."""
