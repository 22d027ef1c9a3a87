"""Data access: the only package that talks to DynamoDB.

Every look-up on a hot path is a GetItem or a Query by key. Limits that must
hold under concurrency (room capacity, rooms per client, subscriptions per
client, rate windows) are conditional writes inside transactions, never
read-then-write.

One module per concern: `ports` (the Protocols the domain depends on and the
`Outcome` of a conditional change), `tables` (the client, its retries, the
backoff and the transaction runner every repository shares), `codec` (attribute
values), then one repository per aggregate (`connections`, `rate_windows`,
`sessions`, `subscriptions`, `rooms`, `streams`), and `dynamo_store`, which
puts them together as `DynamoStore`.
"""
