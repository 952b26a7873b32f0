"""headway.k8s."""
