"""Pricing and usage names, as Golem's market uses them."""

from __future__ import annotations

import enum

SCHEME = "golem.com.scheme"
PRICE_MODEL = "golem.com.pricing.model"
LINEAR_COEFFS = "golem.com.pricing.model.linear.coeffs"
DEFINED_USAGES = "golem.com.usage.vector"


class BillingScheme(enum.Enum):
    PAYU = "payu"


class PriceModel(enum.Enum):
    LINEAR = "linear"


class Counter(enum.Enum):
    """Usage counters; providers here report TIME, CPU, MAXMEM (memory now) and STORAGE."""

    TIME = "golem.usage.duration_sec"
    CPU = "golem.usage.cpu_sec"
    STORAGE = "golem.usage.storage_gib"
    MAXMEM = "golem.usage.gib"
    UNKNOWN = ""
