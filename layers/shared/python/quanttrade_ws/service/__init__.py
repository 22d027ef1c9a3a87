"""The domain behind the WebSocket routes, one module per concern.

`dispatch.RealtimeService` is the service the handlers call. It is assembled
from one class per concern, each in its own module, sharing `core.ServiceCore`'s
collaborators: `lifecycle` ($connect, $disconnect, the sweeper), `subscriptions`,
`rooms`, `sessions` (hello, refresh, resume) and `dispatch` (a frame's checks and
its action).
"""
