"""gRPC clients for the served models, and the `segment` command."""
