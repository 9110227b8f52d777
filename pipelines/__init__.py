"""The shared training pipeline and the entry-point code behind MLproject."""
