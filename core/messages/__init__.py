"""Generated OCPP message types, one module per version."""
