"""headway.routing."""
