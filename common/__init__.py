"""The shared package of every function: configuration, stores, sources, the pipeline stages and the API."""
