"""xatm participant stub: resource managers, the Participant service, context propagation."""
