"""pairs: the study's data, its eight models, stacked training and statistics (no tracking here)."""
