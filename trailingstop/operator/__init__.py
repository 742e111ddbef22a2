"""The kopf operator: TrailingStop handlers, child-object builders and the status writer.

Named ``trailingstop.operator`` (not a top-level ``operator``) so it never shadows the standard
library's ``operator`` module.
"""
