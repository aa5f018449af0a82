"""What every role's process shares: typed configuration, the NATS connection, the HTTP serve loop, auth, clocks.

Above :mod:`tokenrelay.wire`, below the roles: it imports the wire contract and nothing of any role.
"""
