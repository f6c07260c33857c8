"""The TDX module model: the ground truth of every guest-physical page of a TD."""
