"""QuantTrade real-time backbone: the shared package of every Lambda function and the local stack."""
