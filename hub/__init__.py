"""Consortium shared-services hub."""
