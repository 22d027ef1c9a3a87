"""The local stack's command line (`python -m local`), one module per command group.

* `main`: the parser and `main(argv)`;
* `dev`: run the whole backend locally;
* `access_token`: mint an HS256 access token (the local stack's key or a deployed stack's);
* `publish`: put one upstream event on the event bus;
* `listen`: connect, subscribe and print what arrives;
* `admin`: the admin API's reads (stats, connection, subscriptions, members), SigV4-signed;
* `local_target` and `deployed`: what the commands target, the running local stack or a deployed one;
* `arguments`: the argument types and options the commands share.
"""
