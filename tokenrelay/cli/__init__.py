"""The ``tokenrelay`` command line: ``up`` (:mod:`.supervisor`), the roles, ``loadtest`` and ``feedback export``."""
