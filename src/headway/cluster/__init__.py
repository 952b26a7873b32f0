"""Cluster simulation: N `core` engines and the `headway.routing` scheduler in virtual
time (see DESIGN.md: one scheduler, one engine model, three clocks)."""
