"""A peer for bench/capture_overhead.py: mitmdump streaming every response from its headers on.

mitmproxy's own way to stream (its docs' `responseheaders` example), with nothing else: the
response headers go to the client as soon as they arrive, as the capture addon sends an SSE
stream's. `stream_large_bodies=1` instead holds the headers back until the first body bytes.
"""

from mitmproxy import http


class StreamAtHeaders:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.stream = True


addons = [StreamAtHeaders()]
