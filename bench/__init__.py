"""chargeyard.bench"""
