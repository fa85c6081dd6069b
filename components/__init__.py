"""Pulumi ComponentResources: one per cloud, sharing settings, packaging and policy helpers."""
