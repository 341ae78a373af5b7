"""Payments on the wire, as both sides of the contract compute them (proto/exeunit/v1/payment.proto).

What is signed, byte for byte: a payment document (the provider's), its acceptance (the
requestor's) and the binding of a payee address to a provider (in the offer). Each message starts
with its own domain string, so that a signature made for one kind of message never verifies as
another, nor as a call's proof (identity.py). Amounts are decimal strings with at most 18
fractional digits, an ERC-20 token's base unit; this module parses and prints them, so that both
sides read the same number from the same string.
"""

from __future__ import annotations

import hashlib
import re
from decimal import ROUND_DOWN, Decimal, InvalidOperation

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit.v1.conventions import TOKEN_DECIMALS, is_chain_address
from exeunit.v1.identity import SIGNATURE_ALGORITHM, node_id_of_spki

DOCUMENT_DOMAIN = b"exeunit-payment-document/1"
ACCEPTANCE_DOMAIN = b"exeunit-payment-acceptance/1"
BINDING_DOMAIN = b"exeunit-payee-binding/1"

BASE_UNIT = Decimal(1).scaleb(-TOKEN_DECIMALS)
MAX_AMOUNT_CHARS = 64  # far past any supply: a bound on what a peer makes the other parse
_AMOUNT = re.compile(r"[0-9]{1,40}(\.[0-9]{1,18})?")
_TRANSACTION = re.compile(r"^0x[0-9a-fA-F]{64}$")


def parse_amount(text: str) -> Decimal:
    """The amount a decimal string states; ValueError for anything but plain digits with at most 18
    after the point (no sign, exponent, NaN or spaces), so that no two strings mean one amount
    differently to two parsers."""
    if len(text) > MAX_AMOUNT_CHARS or not _AMOUNT.fullmatch(text):
        raise ValueError(f"{text[:MAX_AMOUNT_CHARS]!r} is not an amount: digits, and at most 18 after a point")
    try:
        return Decimal(text)
    except InvalidOperation:  # the pattern rules this out; kept for a clear error all the same
        raise ValueError(f"{text!r} is not an amount") from None


def format_amount(amount: Decimal) -> str:
    """`amount` rounded down to the token's base unit, as a plain decimal string ("0.0123", "5")."""
    if amount < 0:
        raise ValueError(f"an amount is never negative ({amount})")
    rounded = amount.quantize(BASE_UNIT, rounding=ROUND_DOWN)
    text = format(rounded, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def to_base_units(amount: Decimal) -> int:
    """The amount in the token's smallest unit (wei for 18 decimals); exact for a parsed amount."""
    return int(amount.quantize(BASE_UNIT, rounding=ROUND_DOWN).scaleb(TOKEN_DECIMALS))


def from_base_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-TOKEN_DECIMALS)


def same_address(a: str, b: str) -> bool:
    return is_chain_address(a) and is_chain_address(b) and a.lower() == b.lower()


def is_transaction_hash(text: str) -> bool:
    return bool(_TRANSACTION.match(text))


def platform_name(driver: str, network: str, token: str) -> str:
    """Golem's name of a payment platform: "erc20-holesky-tglm"."""
    return f"{driver}-{network}-{token}".lower()


def document_message(body: bytes) -> bytes:
    return DOCUMENT_DOMAIN + b"\0" + body


def document_digest(body: bytes) -> str:
    """The SHA-256 of a document's body, hex: what an acceptance names."""
    return hashlib.sha256(body).hexdigest()


def acceptance_message(body: bytes, amount: str) -> bytes:
    return b"\0".join((ACCEPTANCE_DOMAIN, document_digest(body).encode(), amount.encode()))


def binding_message(provider_id: str, platform: str, chain_id: int, token_address: str, payee_address: str) -> bytes:
    fields = (BINDING_DOMAIN, provider_id.lower().encode(), platform.encode(), str(chain_id).encode(),
              token_address.lower().encode(), payee_address.lower().encode())
    return b"\0".join(fields)


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return key.sign(message, SIGNATURE_ALGORITHM)


def public_key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify(spki_der: bytes, signature: bytes, message: bytes, signer_id: str) -> bool:
    """Whether `signature` over `message` is by the P-256 key `spki_der`, and that key's id is
    `signer_id`: a key that verifies but belongs to someone else does not count."""
    if node_id_of_spki(spki_der) != signer_id.lower():
        return False
    try:
        public_key = serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError):
        return False
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        return False
    try:
        public_key.verify(signature, message, SIGNATURE_ALGORITHM)
    except InvalidSignature:
        return False
    return True
