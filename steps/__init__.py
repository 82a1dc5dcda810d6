"""Pipeline steps: one thin CLI per step (`python -m steps.<name>`), sharing `flags` and `artifacts`."""
