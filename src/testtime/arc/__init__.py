"""ARC: grids and tasks, invertible transforms, text format, test-time training, voting, scoring."""
