"""Throwaway PostgreSQL clusters for tests: the launcher ``xatm bench --postgresql`` uses too."""

from xatm.coordinator.tools.pgcluster import PgCluster, PgClusterError, find_bindir, pg_url, prepared

__all__ = ["PgCluster", "PgClusterError", "find_bindir", "pg_url", "prepared"]
