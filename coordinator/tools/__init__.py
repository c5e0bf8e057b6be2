"""``xatm demo`` and ``xatm bench``, with the example services they start (shipped in the package)."""
