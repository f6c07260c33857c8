"""Coverage-guided fuzz targets for lazyaccept's readers of untrusted input (see README.md)."""
