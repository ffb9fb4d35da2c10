"""A loopback HTTP server for the benchmarks, optionally rate limited like a real link.

    python3 benches/serve.py PORT [BYTES_PER_SECOND]   (serves the current directory; 0 = no limit)
"""
import http.server
import sys
import time

RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


class Handler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source, outputfile):
        if not RATE:
            return super().copyfile(source, outputfile)
        start, sent = time.monotonic(), 0
        while True:
            chunk = source.read(256 * 1024)
            if not chunk:
                return
            outputfile.write(chunk)
            sent += len(chunk)
            ahead = sent / RATE - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
