"""The Management API servers the delivery benchmarks post to, each in a child process so its CPU is not counted.

* the local gateway (`local.api_gateway.server.LocalGateway`) with real
  WebSocket clients connected to it, so every post is delivered to a socket;
* a minimal stand-in that answers 200 to every `POST /@connections/*`, over
  plain HTTP or TLS with a self-signed certificate.

A server announces its endpoint and connection ids with one JSON line on its
stdout and runs until its stdin closes. `ServerProcess` starts one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from bench.child_process import ROOT, child_environment, first_line

STARTUP_TIMEOUT = 60.0


def _announce(endpoint: str, connection_ids: Sequence[str], kind: str, ca_file: str | None = None) -> None:
    announcement = {"endpoint": endpoint, "connection_ids": list(connection_ids), "kind": kind, "ca_file": ca_file}
    sys.stdout.write(json.dumps(announcement) + "\n")
    sys.stdout.flush()


def _self_signed_certificate(directory: str) -> tuple[str, str]:
    """A certificate for localhost (the `cryptography` package is a dev dependency), so TLS costs can be measured."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_file, "wb") as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_file, key_file


async def _until_stdin_closes() -> None:
    import asyncio

    # The parent holds our stdin; when it exits or closes it, we stop, so no server outlives a run.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _serve_standin(tls: bool) -> None:
    import asyncio
    import ssl
    import tempfile

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    class StandIn(asyncio.Protocol):
        """Just enough HTTP/1.1: heads, Content-Length bodies, keep-alive, several requests per read."""

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            buffer = self.buffer + data
            replies = []
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buffer[:end].lower()
                length = 0
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17 : stop if stop >= 0 else len(head)])
                if len(buffer) < end + 4 + length:
                    break
                replies.append(answer if b"/@connections/" in head.split(b" ", 2)[1] else missing)
                buffer = buffer[end + 4 + length :]
            self.buffer = buffer
            if replies:
                self.transport.write(b"".join(replies))

    from bench.delivery_worker import BATCH

    ids = [f"standin-{i:05d}=" for i in range(BATCH)]
    with tempfile.TemporaryDirectory() as directory:
        context = None
        if tls:
            cert_file, key_file = _self_signed_certificate(directory)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert_file, key_file)
        server = await asyncio.get_running_loop().create_server(StandIn, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        if context is None:
            _announce(f"http://127.0.0.1:{port}/bench", ids, "stand-in subprocess")
        else:
            _announce(f"https://localhost:{port}/bench", ids, "stand-in subprocess, TLS", cert_file)
        await _until_stdin_closes()
        server.close()


async def _serve_local_gateway(clients: int) -> None:
    import asyncio
    import logging

    import aiohttp

    from local.api_gateway.config import GatewayConfig
    from local.api_gateway.server import LocalGateway

    logging.disable(logging.CRITICAL)
    config = GatewayConfig(
        port=0,
        stage="bench",
        management_rate_per_second=1e9,  # measure the client, not the emulated account quota
        connect_rate_per_second=None,
        idle_timeout=3600.0,
    )
    async with (
        LocalGateway(config) as gateway,
        aiohttp.ClientSession(
            # Each WebSocket holds its connection for good: aiohttp's default cap of 100 would park the rest forever.
            connector=aiohttp.TCPConnector(limit=0)
        ) as session,
    ):
        sockets = []
        for start in range(0, clients, 100):
            sockets += await asyncio.gather(
                *(session.ws_connect(gateway.url, autoping=True) for _ in range(start, min(clients, start + 100)))
            )

        async def drain(ws: Any) -> None:
            async for _ in ws:
                pass

        readers = [asyncio.create_task(drain(ws)) for ws in sockets]
        for _ in range(200):
            if len(gateway.connection_ids) >= clients:
                break
            await asyncio.sleep(0.05)
        _announce(gateway.management_endpoint, gateway.connection_ids, "local gateway subprocess")
        await _until_stdin_closes()
        for ws in sockets:
            await ws.close()
        for reader in readers:
            reader.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    import asyncio

    parser = argparse.ArgumentParser(prog="python -m bench.management_api_servers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["local-gateway", "standin"])
    parser.add_argument("--clients", type=int, required=True, help="WebSocket clients on the local gateway")
    parser.add_argument("--tls", action="store_true", help="HTTPS, with a self-signed certificate (the stand-in)")
    args = parser.parse_args(argv)
    asyncio.run(_serve_local_gateway(args.clients) if args.kind == "local-gateway" else _serve_standin(args.tls))


class ServerProcess:
    """A server in a child process, announced by one JSON line on its stdout, stopped by closing its stdin."""

    def __init__(self, kind: str, clients: int, tls: bool) -> None:
        command = [sys.executable, "-m", "bench.management_api_servers", kind, "--clients", str(clients)]
        self.process = subprocess.Popen(
            [*command, "--tls"] if tls else command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=child_environment(),
        )
        line = first_line(self.process, STARTUP_TIMEOUT)
        if not line:
            self.close()
            raise RuntimeError(f"{kind} server did not start within {STARTUP_TIMEOUT}s")
        self.target: dict[str, Any] = json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


if __name__ == "__main__":
    main()
