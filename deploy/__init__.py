"""Deployment tooling (run from the checkout, with the dev venv): pinned requirements and the gcloud commands."""
