"""Sending: the clients that put prepared requests on the wire and the `Outcome` each send
produces (timings, status, token events, error kind). The one place exceptions become error
kinds is `outcome.classify`."""
