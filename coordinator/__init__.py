"""xatm coordinator: drives two-phase commit across participants and logs every decision."""

__all__: list[str] = []
