"""Camera geometry, trajectories and RGB-D geometry (one place for all of it)."""
