"""What a run writes, and how: run paths, atomic checkpoints, the metric writer, trackers, and which
way is better for each metric."""
