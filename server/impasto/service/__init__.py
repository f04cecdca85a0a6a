"""impasto-server: the gRPC service over the jobs layer, its transport limits and authentication."""
