"""The gRPC skin: validate, call the provider facade, convert; errors become status codes here."""
