"""headway.resources."""
