"""impasto-server: the gRPC service, job queue and its limits."""
