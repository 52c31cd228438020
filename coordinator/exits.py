"""The coordinator's exit codes, which scripts and sshd's callers may trust."""

#: done
EXIT_OK = 0
#: a refusal the command reports (an unknown host, a bad key, no such alert; for
#: `watch`, a host is silent; for a session, a fatal reply)
EXIT_REFUSED = 1
#: bad usage or configuration
EXIT_USAGE = 2
#: the store cannot be opened or written (for a session: the coordinator is away)
EXIT_STORE = 3
