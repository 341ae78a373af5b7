"""What survives a daemon restart: the home, the record store, the batch journals."""
