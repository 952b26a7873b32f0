"""headway.epp."""
