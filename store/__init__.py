"""chargeyard.store"""
