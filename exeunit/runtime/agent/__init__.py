"""The resident agent: its guest side (guest.py, run inside containers) and the daemon side."""
