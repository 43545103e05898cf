"""shopguard: find fraud and abuse in an online shop's behaviour logs and explain every decision.

Data flow: events -> store -> features -> models -> decision -> api / cli.
"""

from __future__ import annotations

__version__ = "0.1.0"
