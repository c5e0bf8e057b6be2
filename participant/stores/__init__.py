"""Resource managers: the ``ResourceManager`` contract and the stores shipped with xatm.

- ``base``: the contract a store implements, and ``BranchEnded``.
- ``sqlite``: the embedded SQLite store; ``postgresql``: PostgreSQL over psycopg 3 (the
  ``postgresql`` extra); ``memory``: a no-op store for benchmarks and tests.
"""
