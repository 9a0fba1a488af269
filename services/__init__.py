"""chargeyard.services"""
