"""headway.cluster."""
