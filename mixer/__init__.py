"""Choosing domain weights: runs tables, RegMix regression, mixture scaling laws."""
