"""What the daemon deals in, as values and rules: no gRPC, no Docker, no files."""
