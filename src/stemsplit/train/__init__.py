"""Training (``stemsplit train``, ``stemsplit finetune``): recipes, data pipeline, losses, the run loop."""
