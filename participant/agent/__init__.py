"""``xatm participant``: the standalone agent that joins a database to global transactions."""
