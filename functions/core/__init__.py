"""The cloud-agnostic core: Pillow and the standard library only."""
