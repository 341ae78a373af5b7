"""What orchestrates the domain on one host: the provider facade and the objects it drives."""
