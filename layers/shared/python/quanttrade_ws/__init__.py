"""QuantTrade real-time backbone: the shared package of every Lambda function and the local stack."""

import os

# pydantic looks for plugins through importlib.metadata entry points when the first
# model is built, which costs 20+ ms of every cold start; this service uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")
