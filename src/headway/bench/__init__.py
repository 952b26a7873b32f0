"""headway.bench."""
