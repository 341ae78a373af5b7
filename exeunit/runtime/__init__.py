"""The seam to the machinery that runs containers (protocols.py) and the host-side parts beside it."""
