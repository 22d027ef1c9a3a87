"""Soak (what `make soak` runs): the local stack held under realistic and abusive load for a while.

    python -m bench.soak [--connections 2000] [--duration 60] [--rate 1] [--ping-interval 30] [--burst 500]

What happens, all on 127.0.0.1 (the stack in a child process, `bench.stack_server`):

1. `--connections` clients connect (one user each; the service limits new
   connections per user and minute) and subscribe to one of a few market data
   streams, in concurrent waves that stay under the gateway's 500 connects/s.
2. For `--duration` seconds they are held: each pings every `--ping-interval`
   seconds, and a publisher here puts `--rate` MarketData events per second on
   the bus (round robin over the symbols), steady by the clock.
3. Meanwhile, `--burst` new connections are opened within one second against
   the gateway's default limit of 500 new connections per second (all should
   get in), and a script of abusive clients runs every `--abuse-interval`
   seconds: frames over 32 KB and messages over 128 KB (close 1009), floods
   beyond 100 messages per second (RATE_LIMIT, then the connection is closed),
   invalid JSON and unknown actions, no token (HTTP 401) and bad tokens (HTTP 403), and streams and
   rooms the token does not permit (FORBIDDEN, INVALID_ROOM).
4. The feed stops; once every held client has the last seq of its stream (or
   a deadline passes), messages lost are counted: every seq of its stream from
   the first one it received on must be there, without gaps.

The defaults are about what the local stack carries on the 2-core development
machine, measured: with 2,000 subscribers on 4 streams, 1 event/s (500
deliveries/s) and a ping per client every 30 s (67 messages/s), publish to
receive starts at 1-2 s and the burst and the abusive clients push it to
several seconds, cleared within seconds of the feed stopping; at 2 events/s
with the same pings the fan-out falls further behind every second, even
without burst and abuse, because moto, one Python process answering every
DynamoDB call of every function, is saturated. Nothing was lost either way;
the latency figures (overall and per 10 s of publishing) say how far behind
it was.

Printed and written to bench/soak-results.json with the machine section:
connections held, messages delivered, errors by kind (close codes, error
codes, HTTP refusals), the gateway process's memory at start and end, and
messages lost. Every phase has a deadline, so the run always ends by itself.

The modules: `scenario` (the run and its figures), `clients` (the held
clients and what they count), `load` (connecting, the feed, the pings, the
burst), `abuse` (the abusive clients and what each should get), `accounting`
(messages lost, latencies, the drain).
"""
