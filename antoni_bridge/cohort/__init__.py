"""Cohorts on Ray: `cohort embed` and `cohort ask` over thousands of slides, on one workstation or a cluster.

Ray is an optional extra (`pip install 'antoni-bridge[cohort]'`); nothing outside this package imports it,
so the rest of antoni-bridge works without it.
"""
