"""Endurance and capacity of the stack exactly as `make dev` runs it.

    python -m bench.endurance [--minutes 60] [--clients 1000 5000] [--events 20] [--dev-args "..."]

What runs: `python -m local dev` itself, in its own process group, with the
simulator at its default rate (add `--dev-args "--rate 60"` for 10x). This
process is only a client of it, as a user's dashboard would be:

1. Endurance, for `--minutes`:
   * the resident memory of every process of the stack (the dev process, moto,
     the Lambda workers), summed, every `--sample-interval` seconds;
   * a subscriber to every symbol (`market_data` with no symbol) counts the
     ticks it receives, per minute;
   * `/ready` is asked every `--ready-interval` seconds (2 s timeout);
   * every `--probe-interval` seconds a MarketData event for a symbol of its
     own is put on the bus, and the time until a subscriber of that symbol
     receives it is recorded (publish-to-receive; one machine, one clock).
2. Capacity, for each of `--clients`: that many clients connect and subscribe
   to one symbol (time to all subscribed), then `--events` events for that
   symbol are published one after another, each measured to its last receipt.
3. Stop: SIGINT with every client still connected, as Ctrl-C would; the time
   until the dev process has exited, and how many clients saw their socket
   closed by the server.

Figures are printed and merged into bench/results.json under "endurance"
(or `--output`), with the machine section and the command.
"""

RESULTS_KEY = "endurance"  # the default key in bench/results.json; every key of this benchmark starts with it
