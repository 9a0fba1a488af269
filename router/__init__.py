"""chargeyard.router"""
