"""headway.gateway."""
