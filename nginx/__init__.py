"""The nginx front template, shipped as package data (``chargeyard nginx-config``)."""
