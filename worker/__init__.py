"""chargeyard.worker"""
