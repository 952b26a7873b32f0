"""headway.sim."""
