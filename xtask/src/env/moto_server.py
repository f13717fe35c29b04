"""moto's DynamoDB server with requests serialised.

moto handles requests on several threads without a lock around its backends, so two
conditional writes to one item can both succeed (seen: two UpdateItem calls conditional on
the same leaseCounter both returned 200). DynamoDB applies conditional writes to an item one
at a time, and the lease tests depend on that, so every request here runs under one lock.
Connections are still served by threads, so an idle keep-alive connection blocks nobody.

Usage: python moto_server.py HOST PORT
"""

import os
import signal
import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        with lock:
            # Consume the whole response inside the lock.
            return list(app(environ, start_response))

    run_simple(host, port, serialised, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
