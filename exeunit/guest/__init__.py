"""Code that runs inside activities' containers (mounted there by the daemon, not imported)."""
