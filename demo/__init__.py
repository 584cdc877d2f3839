"""Deterministic demo datasets with planted structure that later stages can be measured against."""
