"""`python -m local token`: mint an HS256 access token with the local stack's key or a deployed stack's."""

from __future__ import annotations

import argparse
from typing import Any

from local.cli.arguments import add_deployed_options
from local.cli.deployed import (
    SECRET_OUTPUT,
    DeployedStack,
    aws_error,
    aws_session,
    deployed_stack,
    is_deployed,
    local_only_profile,
)
from local.cli.local_target import local_signing_key, quiet_development_warnings


def cmd_token(args: argparse.Namespace) -> int:
    from local.tokens import mint_token
    from quanttrade_ws.auth import ALL_PERMISSIONS

    quiet_development_warnings()
    permissions = args.permissions if args.permissions else list(ALL_PERMISSIONS)
    token = mint_token(
        signing_key(args),
        args.user,
        permissions=permissions,
        subscription_level=args.level,
        client_type=args.client_type,
        expires_in=args.expires,
        issuer=args.issuer,
        audience=args.audience,
    )
    print(token)
    return 0


def signing_key(args: argparse.Namespace) -> str:
    """The HS256 access-token key: the local stack's, or a deployed stack's (its JwtSecretArn secret)."""
    if not is_deployed(args):
        local_only_profile(args, "signing key")
        return local_signing_key()
    session = aws_session(args)
    stack = deployed_stack(args, session)
    assert stack is not None
    return read_signing_key(session, stack)


def read_signing_key(session: Any, stack: DeployedStack) -> str:
    """The value of the secret a deployed stack's JwtSecretArn output names, read with the session's credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    if SECRET_OUTPUT not in stack.outputs:
        if "UserPoolId" in stack.outputs:
            raise SystemExit(
                f"stack {stack.name} verifies access tokens of its Cognito user pool {stack.outputs['UserPoolId']} "
                f"(app client {stack.outputs.get('UserPoolClientId', '?')}): sign in there for a token; it has no "
                "HS256 key to mint one with"
            )
        stack.output(SECRET_OUTPUT)  # says which outputs there are
    arn = stack.outputs[SECRET_OUTPUT]
    parts = arn.split(":")
    if len(parts) < 7 or parts[2] != "secretsmanager":
        raise SystemExit(f"the {SECRET_OUTPUT} output of {stack.name} in {stack.origin} is no secret ARN: {arn!r}")
    try:
        client = session.client("secretsmanager", region_name=parts[3])
        return str(client.get_secret_value(SecretId=arn)["SecretString"])
    except ClientError as error:
        raise SystemExit(
            f"cannot read the signing key {arn}: {aws_error(error)} "
            "(the credentials need secretsmanager:GetSecretValue on it, and kms:Decrypt if a key of yours encrypts it)"
        ) from None
    except (BotoCoreError, KeyError) as error:
        raise SystemExit(f"cannot read the signing key {arn}: {error}") from None


def add_command(commands: Any) -> None:
    """The `token` command and its options. `commands`: the main parser's sub-parsers."""
    from quanttrade_ws.auth import ALL_PERMISSIONS, CLIENT_TYPES, SUBSCRIPTION_LEVELS
    from quanttrade_ws.config import DEFAULT_AUDIENCE, DEFAULT_ISSUER

    token = commands.add_parser(
        "token",
        help="mint an HS256 access token: the local stack's key, or a deployed stack's (--stack/--outputs)",
        description="Mint an HS256 access token for testing. Locally with $QT_JWT_SECRET or the running stack's "
        f"key; with --outputs/--stack with the deployed stack's key, the secret its {SECRET_OUTPUT} output names. "
        "A stack that verifies RS256 tokens (jwks_url, cognito) has no such key: its tokens come from the "
        "identity provider.",
    )
    token.add_argument("--user", default="dev-user", help="the token's subject")
    token.add_argument(
        "--permissions", nargs="*", metavar="PERMISSION", help=f"default: all ({', '.join(ALL_PERMISSIONS)})"
    )
    token.add_argument("--level", default="premium", choices=SUBSCRIPTION_LEVELS, help="subscription level")
    token.add_argument("--client-type", default="web", choices=CLIENT_TYPES)
    token.add_argument("--expires", type=int, default=3600, help="lifetime in seconds (3600)")
    token.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"iss: settings.jwt_issuer ({DEFAULT_ISSUER})")
    token.add_argument("--audience", default=DEFAULT_AUDIENCE, help=f"aud: settings.jwt_audience ({DEFAULT_AUDIENCE})")
    add_deployed_options(token, "whose credentials read the signing key")
    token.set_defaults(func=cmd_token)
