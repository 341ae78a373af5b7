"""What both sides of the contract agree on beyond the messages' shapes, defined once for both.

Written by hand (the rest of exeunit/v1 is generated); the requestor imports it as it imports the
generated code, so a change here is a change of the contract.
"""

from __future__ import annotations

CHUNK_SIZE = 1 << 20  # the largest upload chunk or tunnel message a provider takes (it refuses more)
# The largest download chunk a provider sends: three times fewer messages than 1 MiB ones (each
# costs both ends a turn of their loops), and under gRPC's default 4 MiB receive limit.
DOWNLOAD_CHUNK_SIZE = 3 << 20
GIB = 1 << 30  # Golem states memory and storage in GiB; the contract carries bytes

# Runtimes an offer names (golem.runtime.name). docker-vm runs the demand's image in a container;
# test-counters is Golem's test runtime: the provider brings the image, and `sleep MS` is waited
# out by the provider and counted, in seconds, in CUSTOM_COUNTER.
DOCKER_VM_RUNTIME = "docker-vm"
TEST_COUNTERS_RUNTIME = "test-counters"
CUSTOM_COUNTER = "golem.usage.custom.counter"
VPN_CAPABILITY = "vpn"  # an offer with it can join its activities to private networks (as Golem's vm)
# An offer with it takes activities one after another on one agreement (at most one live at a
# time), billed as one agreement: Golem's `golem.srv.caps.multi-activity`.
MULTI_ACTIVITY_CAPABILITY = "golem.srv.caps.multi-activity"

# Providers found without a list: DNS-SD over mDNS on a LAN (TXT: id, name, subnet, tls), and
# DNS SRV records in a zone, whose target hosts may name the provider on each port in a TXT
# record ("exeunit:PORT=PROVIDER_ID"), so that the requestor can pin it.
MDNS_SERVICE_TYPE = "_exeunit._tcp.local."
SRV_TXT_PREFIX = "exeunit:"

# ActivityState values by name, as Golem names the states ("Ready"); 0 is "Unspecified".
ACTIVITY_STATES = ("Unspecified", "New", "Deployed", "Ready", "Terminated")


def activity_state_name(value: int) -> str:
    """Golem's name of an ActivityState enum value ("Unspecified" for any the contract lacks)."""
    return ACTIVITY_STATES[value] if 0 <= value < len(ACTIVITY_STATES) else ACTIVITY_STATES[0]

# Payments (proto/exeunit/v1/payment.proto): amounts have at most this many digits after the
# point, an ERC-20 token's base unit; a demand may ask debit notes to be accepted this fast at most.
TOKEN_DECIMALS = 18
MIN_ACCEPT_TIMEOUT_SECONDS = 5.0


def is_chain_address(text: str) -> bool:
    """An Ethereum address: 0x and 40 hex digits (compared case-insensitively)."""
    return len(text) == 42 and text.startswith("0x") and all(c in "0123456789abcdefABCDEF" for c in text[2:])

# Digests a transfer is checked with end to end (transfer.proto's DigestAlgorithm, by name):
# SHA-256 always; BLAKE3 where the offer's transfer_digests lists it.
DIGEST_SHA256 = "sha256"
DIGEST_BLAKE3 = "blake3"


def payer_binding_text(requestor_id: str, provider_id: str, platform: str) -> str:
    """What a demand's payer address signs (EIP-191 personal message) to show it is the
    requestor's: a provider credits only payments from an address its requestor proved it holds."""
    return f"exeunit-payer-binding/1\nrequestor {requestor_id.lower()}\nprovider {provider_id.lower()}\nplatform {platform}"
