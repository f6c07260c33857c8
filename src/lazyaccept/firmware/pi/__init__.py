"""PI specification structures (HOBs)."""
