"""The QuantTrade WebSocket protocol: the one source of its names, client frames and server messages.

The backend (quanttrade_ws) validates and answers with these models, the AsyncAPI
document (docs/asyncapi.yaml) is generated from them, and the Python client
(clients/python) takes its enums and models from them: this package is a
distribution of its own (layers/shared/pyproject.toml) that the client depends on.

- `quanttrade_protocol.enums`: StreamType, MessageType, ErrorCode, Severity (no pydantic)
- `quanttrade_protocol.frames`: what a client sends, and the stream specs and filters of `subscribe`
- `quanttrade_protocol.messages`: what the server sends (the envelope and every reply and notice payload)
- `quanttrade_protocol.data`: what data messages carry (each upstream event type's fields, and its payload)
"""
