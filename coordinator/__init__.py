"""The central side: session endpoint behind OpenSSH, fleet store, leases, alerts."""
