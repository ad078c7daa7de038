"""Layer 8: the declared end-to-end workflow, its local runner and steps, the Step Functions /
Data Pipeline renderings and the CloudFormation stack deployment.
"""
