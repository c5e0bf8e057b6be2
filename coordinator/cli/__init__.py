"""Command lines: ``xatm`` (coordinator, participant agent, demo, bench) and ``xactl`` (operators)."""
