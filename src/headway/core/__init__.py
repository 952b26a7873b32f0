"""headway.core."""
