"""headway.plan."""
