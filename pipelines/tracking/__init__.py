"""Tracking: MLflow runs (driver side) and a non-blocking metric logger (rank 0 side).

MLflow is imported only inside these modules' functions, and tracking can be switched off.
"""
