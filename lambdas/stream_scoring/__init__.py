"""Stream-scoring Lambda (Kinesis -> online features -> SageMaker endpoint -> alerts)."""
