"""Demo checkpoints nbserve builds offline into its model cache (``nbserve.demo_model()``)."""
