"""The app's admin: importing the modules registers every model with the default site.

Access is decided by `AccountMembership`, not by Django model permissions; see
`conversions.admin.scoping`.
"""

from conversions.admin import attempts, conversions, reference, runs

__all__ = ["attempts", "conversions", "reference", "runs"]
