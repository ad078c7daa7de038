"""Local real-time endpoint hosting the model's SageMaker inference handler."""
