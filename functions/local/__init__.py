"""The `imagepipe` command line and the local development pipeline."""
