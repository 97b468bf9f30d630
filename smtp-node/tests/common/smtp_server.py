"""A destination SMTP server for delivery tests, built on aiosmtpd.

Every accepted message is written to <dir>/msg-<n>.json with its envelope, the
connection it came over (connections are numbered from 1), whether that connection was
TLS and which user authenticated. <dir>/ready appears once the server listens.

Options:
  --listen IP:PORT
  --dir DIR
  --refuse ADDRESS=REPLY[=COUNT]  refuse RCPT TO ADDRESS with REPLY (e.g. "550 5.1.1 no
                                  such user") COUNT times (default: always), then accept
  --tls CERT KEY                  offer STARTTLS with this certificate
  --implicit-tls                  with --tls: TLS from the first byte instead (port 465 style)
  --broken-tls                    with --tls: allow only TLS 1.1, so every handshake fails
  --auth USER:PASSWORD            require AUTH (PLAIN/LOGIN, only over TLS)
  --data-delay SECONDS            wait before answering the end of DATA
  --idle-timeout SECONDS          close a connection idle this long (421 first), as
                                  servers do
"""

import argparse
import asyncio
import base64
import itertools
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult

CONNECTIONS = itertools.count(1)
MESSAGES = itertools.count(1)


class CountingSMTP(SMTP):
    def connection_made(self, transport):
        # Called again for the TLS transport after STARTTLS: same connection.
        if getattr(self, "connection_number", None) is None:
            self.connection_number = next(CONNECTIONS)
        super().connection_made(transport)


class Handler:
    def __init__(self, directory, refusals, data_delay):
        self.directory = directory
        self.refusals = refusals
        self.data_delay = data_delay

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rule = self.refusals.get(address.lower())
        if rule is not None and rule["left"] != 0:
            rule["left"] -= 1
            return rule["reply"]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        content = envelope.original_content or envelope.content
        record = {
            "connection": server.connection_number,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "auth": session.auth_data if session.authenticated else None,
            "helo": session.host_name,
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "rcpt_options": envelope.rcpt_options,
            "data": base64.b64encode(content).decode(),
        }
        n = next(MESSAGES)
        path = os.path.join(self.directory, "msg-%d.json" % n)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 queued as %d" % n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--refuse", action="append", default=[])
    parser.add_argument("--tls", nargs=2)
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--broken-tls", action="store_true")
    parser.add_argument("--auth")
    parser.add_argument("--data-delay", type=float, default=0)
    parser.add_argument("--idle-timeout", type=float)
    args = parser.parse_args()

    refusals = {}
    for rule in args.refuse:
        parts = rule.split("=")
        count = int(parts[2]) if len(parts) > 2 else -1
        refusals[parts[0].lower()] = {"reply": parts[1], "left": count}

    kwargs = {"enable_SMTPUTF8": True, "hostname": "sink.test"}
    if args.idle_timeout:
        kwargs["timeout"] = args.idle_timeout
    server_ssl = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls[0], args.tls[1])
        if args.broken_tls:
            context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        if args.implicit_tls:
            server_ssl = context
        else:
            kwargs["tls_context"] = context
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

        kwargs["authenticator"] = authenticator
        kwargs["auth_required"] = True
        # aiosmtpd only recognises STARTTLS as encryption; implicit TLS is encrypted too.
        kwargs["auth_require_tls"] = not args.implicit_tls

    handler = Handler(args.dir, refusals, args.data_delay)
    host, port = args.listen.rsplit(":", 1)

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: CountingSMTP(handler, **kwargs), host=host, port=int(port), ssl=server_ssl
        )
        with open(os.path.join(args.dir, "ready"), "w") as f:
            f.write("ready\n")
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
