"""The local stack's command line: run it, mint tokens, publish events, listen, read the admin API.

python -m local dev                       the whole backend with the simulator (what `make dev` runs)
python -m local token --user alice        a development access token
python -m local token --stack QuantTrade-prod --profile prod    one signed with a deployed stack's HS256 key
python -m local publish MarketData '{"symbol": "AAPL", ...}'
python -m local publish --file events/eventbridge/market_data.json
python -m local listen --stream market_data:AAPL --room desk-eu [--count N] [--seconds S]
python -m local stats                     also: connection ID, subscriptions ID, members ROOM

publish, listen and the admin commands target the local stack by default, or a deployed
one with `--outputs FILE` (what `cdk deploy --outputs-file` writes) and/or `--stack NAME`
(its outputs from CloudFormation), with `--profile` and `--region` for the credentials:

python -m local publish --outputs outputs.json --profile prod --file events/eventbridge/alert.json
python -m local listen --outputs outputs.json --token "$QT_TOKEN" --stream market_data:AAPL
python -m local stats --stack QuantTrade-prod --profile prod     (SigV4-signed, service execute-api)
"""

from __future__ import annotations

import argparse

from local.cli import access_token, admin, dev, listen, publish

EPILOG = """\
Local or deployed: publish, listen, stats, connection, subscriptions and members talk to the local stack
(`python -m local dev`) unless given a deployed stack's outputs:

  cdk deploy --outputs-file outputs.json
  python -m local publish --outputs outputs.json --profile prod --file events/eventbridge/alert.json
  QT_TOKEN=... python -m local listen --outputs outputs.json --stream market_data:AAPL --count 5
  python -m local stats --stack QuantTrade-prod --profile prod --region eu-west-1

The admin API is IAM-authorised: its requests are signed (SigV4, service execute-api) with the profile's
credentials. `token --stack NAME` (or --outputs FILE) signs a test token with a deployed stack's HS256 key,
read from the secret its JwtSecretArn output names (secretsmanager:GetSecretValue).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="The QuantTrade local stack: API Gateway emulator + Lambda handlers + moto, on one machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev.add_command(commands)
    access_token.add_command(commands)
    publish.add_command(commands)
    listen.add_command(commands)
    admin.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
