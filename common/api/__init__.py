"""The public REST API: a Flask app factory plus request validation."""
