"""End to end on the local stack: one PutEvents of a MarketData event to 1,000 and to 5,000 WebSocket clients.

What is measured, per audience size, over REPEATS publishes spaced so their
deliveries never overlap:

* publish-to-receive latency: `time.time()` in the publisher right before
  `events.put_events`, and in each client when its frame arrives (one machine,
  one clock), pooled over every client of every publish: p50 and p99;
* deliveries per second: audience / (last arrival - publish), the median over
  the publishes;
* the ceiling: a plain `websockets` server broadcasting a frame of the same byte
  size to the same number of clients (`websockets.asyncio.server.broadcast`),
  timed the same way from the moment the bench asks it to broadcast; and the
  ratio service / ceiling.

Process layout, for fairness on a 2-core machine: the local stack (gateway
emulator, handlers, pumps) in one child process, moto in its own grandchild
(the stack's default), the plain server in another child, and every client in
this process. Both servers are measured with the same clients, so whatever
this process costs per received frame is paid on both sides of the ratio; the
bench's own CPU time per phase is reported so a client-bound ceiling shows.

Run: `python -m bench.end_to_end [--audiences 1000 5000] [--repeats 20]`.

The modules: `scenario` (the run: servers, clients, publishes, figures),
`clients` (the WebSocket clients and their arrival times), `rounds` (one
audience size's publishes and its summary), `ceiling` (the plain `websockets`
server), `samples_pattern` (what AWS's samples do with one event),
`moto_query` (what the emulator costs per audience Query).
"""
