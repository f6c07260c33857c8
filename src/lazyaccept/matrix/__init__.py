"""`lazyaccept matrix`: a sweep of real boots over axes (firmware x loader x kernel x TD size x policy), each cell
the run `lazyaccept run` does for one scenario, cached by content and written as JSON Lines and Parquet."""
