"""Language-model test-time fine-tuning with SIFT data selection."""
