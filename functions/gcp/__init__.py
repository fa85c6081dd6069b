"""GCP: the Cloud Functions gen2 entry point (`main.py`) and its google-cloud-* adapters."""
