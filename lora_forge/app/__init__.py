"""The front desk: plain-Python use cases between the stage rooms and the three faces (ui, cli, api)."""
