"""The requestor's account on a payment chain, and the chain it pays on.

`PaymentAccount` is a secp256k1 key (an Ethereum account) kept in a file of its own, made on first
use: `$GOLEM_PAYMENT_KEY_FILE`, else `requestor-payment-key` in the config directory beside the
requestor's identity (requestor.client.identity.config_dir()). The file holds the key as 0x-hex,
is made 0600 and is never written or read through a link: whoever holds it spends the account's
tokens. Its `address` is what to fund (the token to pay with, the chain's coin for gas).

`PaymentNetwork` names the chain: the JSON-RPC endpoint, its chain id, the ERC-20 token's address
and how many confirmations a payment waits for, from arguments or the environment
(GOLEM_PAYMENT_RPC_URL, GOLEM_PAYMENT_CHAIN_ID, GOLEM_PAYMENT_TOKEN_ADDRESS,
GOLEM_PAYMENT_CONFIRMATIONS). No token address is built in: a wrong constant would send real
tokens to the wrong contract, so the configuration names it. `platform` is Golem's name for it,
as yapapi forms it: "erc20-holesky-tglm", "erc20-polygon-glm".

The private-file helpers at the end are this module's own: the requestor imports nothing of the
daemon's outside requestor.client but exeunit.v1.conventions (docs/layout.md, rule 9).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from requestor.client.identity import config_dir, make_directory_for
from requestor.errors import RequestorError

log = logging.getLogger(__name__)

KEY_FILE_ENV = "GOLEM_PAYMENT_KEY_FILE"
KEY_FILE = "requestor-payment-key"
RPC_URL_ENV = "GOLEM_PAYMENT_RPC_URL"
CHAIN_ID_ENV = "GOLEM_PAYMENT_CHAIN_ID"
TOKEN_ADDRESS_ENV = "GOLEM_PAYMENT_TOKEN_ADDRESS"
CONFIRMATIONS_ENV = "GOLEM_PAYMENT_CONFIRMATIONS"
# yapapi's names for the driver and network when none is given (yapapi/engine.py).
DRIVER_ENV = "YAGNA_PAYMENT_DRIVER"
NETWORK_ENV = "YAGNA_PAYMENT_NETWORK"
DEFAULT_DRIVER = "erc20"
DEFAULT_NETWORK = "holesky"
DEFAULT_CONFIRMATIONS = 1
MAINNET_NETWORKS = frozenset({"mainnet", "polygon"})
MAINNET_TOKEN_NAME = "glm"
TESTNET_TOKEN_NAME = "tglm"

FILE_MODE = 0o600
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_KEY = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")


class PaymentConfigError(RequestorError, ValueError):
    """The payment configuration is missing or malformed; the message names what to set."""


def is_address(value: object) -> bool:
    """True for an account or contract address written as 0x and 40 hex digits."""
    return isinstance(value, str) and _ADDRESS.fullmatch(value) is not None


def default_key_path() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or config_dir() / KEY_FILE)


class PaymentAccount:
    """A key that signs the requestor's payments; `address` is its account (checksummed)."""

    def __init__(self, private_key: str | bytes, path: Path | None = None) -> None:
        from eth_account import Account  # web3's: slow to import, loaded only when paying

        self._account = Account.from_key(private_key)
        self.address: str = self._account.address
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PaymentAccount:
        """The account whose key is in `path` (default: GOLEM_PAYMENT_KEY_FILE, else the config
        directory's), made there on first use (and said so, with its address)."""
        where = Path(path) if path is not None else default_key_path()
        created = False
        try:
            make_directory_for(where)
            text = read_private(where)
            if text is None:
                from eth_account import Account

                made = Account.create()
                created = create_private(where, ("0x" + bytes(made.key).hex() + "\n").encode())
                text = read_private(where)  # ours, or the one another process made first
                if text is None:
                    raise FileNotFoundError(f"{where} vanished while it was being made")
        except OSError as exc:
            raise RequestorError(f"cannot use the payment key {where}: {exc}") from None
        match = _KEY.fullmatch(text.strip())
        if match is None:
            raise RequestorError(f"the payment key file {where} does not hold a key (64 hex digits)")
        account = cls(bytes.fromhex(match.group(1)), where)
        if created:
            log.info("event=payment_account_created address=%s path=%s", account.address, where)
        return account

    def sign_transaction(self, transaction: dict[str, Any]) -> tuple[bytes, str]:
        """The transaction signed by this key: (its raw bytes, its hash as 0x-hex)."""
        signed = self._account.sign_transaction(transaction)
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

    def sign_text(self, text: str) -> bytes:
        """This key's EIP-191 personal-message signature over `text` (65 bytes): how a demand
        proves to a provider that its payer address is this requestor's."""
        from eth_account.messages import encode_defunct

        return bytes(self._account.sign_message(encode_defunct(text=text)).signature)

    def __repr__(self) -> str:  # never the key
        return f"PaymentAccount({self.address}, path={self.path})"


def _env_or(value: Any, env: str) -> Any:
    return value if value is not None else (os.environ.get(env) or None)


def _integer(value: Any, what: str, env: str, minimum: int) -> int:
    try:
        number = int(str(value).strip(), 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise PaymentConfigError(f"{what} {value!r} is not a whole number (set it, or {env})") from None
    if isinstance(value, bool) or number < minimum:
        raise PaymentConfigError(f"{what} {value!r} must be at least {minimum} (set it, or {env})")
    return number


@dataclass(frozen=True)
class PaymentNetwork:
    """A chain to pay on, and the ERC-20 token paid in. Build it with `from_env` to take what
    the arguments leave out from the environment."""

    name: str
    rpc_url: str
    chain_id: int
    token_address: str
    confirmations: int = DEFAULT_CONFIRMATIONS
    driver: str = DEFAULT_DRIVER
    token: str | None = None  # Golem's token name; by default from the network (yapapi's rule)

    def __post_init__(self) -> None:
        if not self.name or not self.driver:
            raise PaymentConfigError("a payment network needs a name and a driver")
        scheme = urlsplit(self.rpc_url).scheme if isinstance(self.rpc_url, str) else ""
        if scheme not in ("http", "https") or not urlsplit(self.rpc_url).hostname:
            raise PaymentConfigError(f"the chain's endpoint {self.rpc_url!r} is not an http(s) URL "
                                     f"(set rpc_url, or {RPC_URL_ENV})")
        if not isinstance(self.chain_id, int) or isinstance(self.chain_id, bool) or self.chain_id < 1:
            raise PaymentConfigError(f"chain id {self.chain_id!r} is not a positive integer "
                                     f"(set chain_id, or {CHAIN_ID_ENV})")
        if not is_address(self.token_address):
            raise PaymentConfigError(f"token address {self.token_address!r} is not 0x and 40 hex digits "
                                     f"(set token_address, or {TOKEN_ADDRESS_ENV})")
        if not isinstance(self.confirmations, int) or self.confirmations < 1:
            raise PaymentConfigError(f"confirmations {self.confirmations!r} must be at least 1 "
                                     f"(set confirmations, or {CONFIRMATIONS_ENV})")

    @classmethod
    def from_env(cls, name: str | None = None, *, rpc_url: str | None = None, chain_id: int | str | None = None,
                 token_address: str | None = None, confirmations: int | str | None = None,
                 driver: str | None = None, token: str | None = None) -> PaymentNetwork:
        """The arguments given, the rest from the environment: the endpoint, chain id and token
        address are required (PaymentConfigError naming the variable when missing); the network
        and driver default as yapapi's (YAGNA_PAYMENT_NETWORK, else "holesky"; YAGNA_PAYMENT_DRIVER,
        else "erc20"), confirmations to 1."""
        rpc_url = _env_or(rpc_url, RPC_URL_ENV)
        chain_id = _env_or(chain_id, CHAIN_ID_ENV)
        token_address = _env_or(token_address, TOKEN_ADDRESS_ENV)
        confirmations = _env_or(confirmations, CONFIRMATIONS_ENV)
        required = ((rpc_url, "the chain's endpoint", RPC_URL_ENV), (chain_id, "the chain id", CHAIN_ID_ENV),
                    (token_address, "the token's address", TOKEN_ADDRESS_ENV))
        for value, what, env in required:
            if value is None:
                raise PaymentConfigError(f"no payment configuration: {what} is not given (set {env})")
        return cls(
            name=(name or os.environ.get(NETWORK_ENV) or DEFAULT_NETWORK).lower(),
            rpc_url=str(rpc_url).strip(),
            chain_id=_integer(chain_id, "chain id", CHAIN_ID_ENV, 1),
            token_address=str(token_address).strip(),
            confirmations=(DEFAULT_CONFIRMATIONS if confirmations is None
                           else _integer(confirmations, "confirmations", CONFIRMATIONS_ENV, 1)),
            driver=(driver or os.environ.get(DRIVER_ENV) or DEFAULT_DRIVER).lower(),
            token=token.lower() if token else None,
        )

    @property
    def token_name(self) -> str:
        if self.token:
            return self.token
        return MAINNET_TOKEN_NAME if self.name in MAINNET_NETWORKS else TESTNET_TOKEN_NAME

    @property
    def platform(self) -> str:
        """Golem's payment platform: f"{driver}-{network}-{token}"."""
        return f"{self.driver}-{self.name}-{self.token_name}"

    @property
    def on_loopback(self) -> bool:
        """The endpoint is on this machine: no proxy from the environment is used for it."""
        host = urlsplit(self.rpc_url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


# Private files, as exeunit.v1.private_files makes them (which the requestor may not import here).

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_private(path: Path, data: bytes) -> bool:
    """Makes `path` holding `data`, mode 0600, on disk; False, leaving it, when something is there
    (another process's file, or a link: not written through). Written aside, then linked into
    place: a reader never sees it half written."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
    fd = os.open(aside, _NEW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        sync_directory(path.parent)
        return True
    finally:
        aside.unlink(missing_ok=True)


def open_private(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """A descriptor on the regular file `path`, opened without following a link (OSError, ELOOP,
    for one) and made private (group's and others' permissions taken off, said in the log)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & FILE_MODE)
            log.warning("event=payment_file_made_private path=%s mode_was=%o", path, stat.S_IMODE(info.st_mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path) -> str | None:
    """The text of the private file `path`, None when there is none."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as source:
        return source.read().decode("utf-8", errors="replace")


def sync_directory(path: Path) -> None:
    """Puts a new name in directory `path` on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
