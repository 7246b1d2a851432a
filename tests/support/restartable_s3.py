"""moto's S3 on a port, in a process of its own whose buckets outlive its HTTP server: reads `stop` and `start` on
stdin, stops or starts serving on the same port, and answers `ok` when done. Run by servers.RestartableS3.

It is a process of its own because importing moto's server imports Flask, whose proxies break vLLM's start-up scan
of every loaded module ("Working outside of application context") in any process that later opens an engine."""

import itertools
import sys

from moto.server import ThreadedMotoServer


def main() -> None:
    port, server = int(sys.argv[1]), None
    for command in itertools.chain(["start"], sys.stdin):  # each line as it comes
        if command.strip() == "start":
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
        elif command.strip() == "stop":
            server.stop()
            server._server.server_close()  # refuse clients, as a stopped server does, rather than leave them waiting
        print("ok", flush=True)


if __name__ == "__main__":
    main()
