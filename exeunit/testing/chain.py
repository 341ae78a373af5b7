"""A real local Ethereum chain for the payment tests: Foundry's `anvil` on loopback, with the test
ERC-20 token (tGLM, chain/TestGLM.sol) deployed on it. Payments are tested against a node that
runs the EVM and mines blocks, not against a mock of one.

scripts/setup.sh installs anvil and the compiler from the npm registry into chain/node_modules and
compiles the token into chain/build/TestGLM.json; `LocalChain` only starts and drives them.

    with LocalChain() as chain:
        token = chain.deploy_token(1_000_000)          # whole tGLM, all to chain.deployer
        address, key = chain.new_account()
        chain.fund(address, eth=1, glm=100)
        ...  # a payment driver at chain.url, chain id CHAIN_ID, token address `token`

Amounts given to `deploy_token` and `fund` are whole ETH and tGLM (ints, Decimals or decimal
strings; both have 18 decimals); balances read back are in base units (wei).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from eth_account import Account
from web3 import Web3
from web3.contract import Contract

CHAIN_DIR = Path(__file__).resolve().parents[2] / "chain"
ARTIFACT = CHAIN_DIR / "build" / "TestGLM.json"
CHAIN_ID = 31337  # anvil's own default, which wallets and tools know as a local chain
# anvil's default mnemonic, named so its dev accounts (and the deployer's address) never change.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_ACCOUNTS = 10
DEV_BALANCE_ETH = 10_000
START_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0
SETUP_HINT = "run scripts/setup.sh"

Amount = int | Decimal | str


class ChainError(RuntimeError):
    """The local chain could not be started or did not do what was asked."""


def anvil_binary(chain_dir: Path = CHAIN_DIR) -> Path:
    """The anvil executable from the npm package for this machine's platform. The binary is run
    directly, not through the package's node wrapper, so stopping it stops the node itself."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower())
    system = platform.system().lower()
    binary = chain_dir / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    if not os.access(binary, os.X_OK):
        raise ChainError(f"anvil is not installed ({binary} is missing): {SETUP_HINT}")
    return binary


def token_artifact(path: Path = ARTIFACT) -> dict[str, Any]:
    """The compiled token (`abi` and `bytecode`) that chain/compile.js writes."""
    try:
        artifact = json.loads(path.read_text())
    except FileNotFoundError:
        raise ChainError(f"the compiled token {path} is missing: {SETUP_HINT}") from None
    if not artifact.get("abi") or not str(artifact.get("bytecode", "")).startswith("0x"):
        raise ChainError(f"{path} has no abi or bytecode: {SETUP_HINT} (it compiles chain/TestGLM.sol)")
    return artifact


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def base_units(amount: Amount) -> int:
    """Whole ETH or tGLM in base units (both have 18 decimals); fractions below 1 wei refused."""
    value = Decimal(str(amount)) * 10**18
    if value != value.to_integral_value() or value < 0:
        raise ValueError(f"{amount!r} is not a non-negative amount with at most 18 decimals")
    return int(value)


class LocalChain:
    """anvil on 127.0.0.1 with chain id 31337 and its deterministic dev accounts, started by the
    constructor (the port is a free one, or `port`) and answering JSON-RPC when it returns."""

    def __init__(self, port: int = 0, chain_dir: Path = CHAIN_DIR) -> None:
        self._binary = anvil_binary(chain_dir)
        self._artifact_path = chain_dir / "build" / "TestGLM.json"
        self._log = tempfile.NamedTemporaryFile(prefix="anvil-", suffix=".log", delete=False)
        self._process: subprocess.Popen[bytes] | None = None
        self.token: Contract | None = None
        # A port found free can be taken before anvil binds it: another one is tried then.
        for attempt in range(3):
            self.port = port or free_loopback_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._process = self._start()
            try:
                self.web3 = self._wait_until_answering()
                break
            except ChainError:
                self._terminate()
                if port or attempt == 2 or "in use" not in self.log_tail():
                    self.stop()
                    raise
        self.deployer: str = self.web3.eth.accounts[0]

    def _start(self) -> subprocess.Popen[bytes]:
        # No --fork-url: the state starts empty and nothing is fetched from any remote endpoint.
        # --prune-history keeps no state snapshots on disk; the chain lives and dies in memory.
        argv = [str(self._binary), "--host", "127.0.0.1", "--port", str(self.port),
                "--chain-id", str(CHAIN_ID), "--mnemonic", DEV_MNEMONIC,
                "--accounts", str(DEV_ACCOUNTS), "--balance", str(DEV_BALANCE_ETH),
                "--prune-history"]
        self._log.seek(0)
        self._log.truncate()
        # In this process group: a Ctrl-C to the tests stops anvil too.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def _wait_until_answering(self) -> Web3:
        # Explicit None proxies: the chain is on loopback, and no proxy from the environment is used.
        # No retries: a refused connection while anvil starts is polled for here, and later a
        # failing call shows at once.
        web3 = Web3(Web3.HTTPProvider(self.url, exception_retry_configuration=None, request_kwargs={
            "timeout": RPC_TIMEOUT, "proxies": {"http": None, "https": None}}))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ChainError(f"anvil exited with {self._process.returncode}: {self.log_tail()}")
            try:
                if web3.eth.chain_id == CHAIN_ID:
                    return web3
            except Exception:  # not listening yet: connection refused
                pass
            time.sleep(0.05)
        raise ChainError(f"anvil did not answer on {self.url} within {START_TIMEOUT:.0f}s: {self.log_tail()}")

    @property
    def pid(self) -> int | None:
        """anvil's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines anvil printed, for error messages."""
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_ok(self, tx_hash: bytes, what: str) -> Any:
        receipt = self.web3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT)
        if receipt["status"] != 1:
            raise ChainError(f"{what} failed on chain: transaction {tx_hash.hex()} reverted")
        return receipt

    def deploy_token(self, supply: Amount) -> str:
        """Deploys TestGLM with `supply` whole tGLM minted to `deployer`; returns its address and
        keeps the contract as `token` (the one `fund` pays from)."""
        artifact = token_artifact(self._artifact_path)
        factory = self.web3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        tx_hash = factory.constructor(base_units(supply)).transact({"from": self.deployer})
        receipt = self._wait_ok(tx_hash, "deploying TestGLM")
        address = receipt["contractAddress"]
        self.token = self.web3.eth.contract(address=address, abi=artifact["abi"])
        return str(address)

    def fund(self, address: str, eth: Amount = 0, glm: Amount = 0) -> None:
        """Sends `eth` ETH (for gas) and `glm` tGLM from the deployer to `address`, each mined."""
        to = Web3.to_checksum_address(address)
        if base_units(eth):
            tx_hash = self.web3.eth.send_transaction(
                {"from": self.deployer, "to": to, "value": base_units(eth)})
            self._wait_ok(tx_hash, f"sending {eth} ETH to {to}")
        if base_units(glm):
            if self.token is None:
                raise ChainError("no token to fund from: call deploy_token() first")
            tx_hash = self.token.functions.transfer(to, base_units(glm)).transact({"from": self.deployer})
            self._wait_ok(tx_hash, f"sending {glm} tGLM to {to}")

    def glm_balance(self, address: str) -> int:
        """`address`'s tGLM in base units."""
        if self.token is None:
            raise ChainError("no token deployed: call deploy_token() first")
        return int(self.token.functions.balanceOf(Web3.to_checksum_address(address)).call())

    @staticmethod
    def new_account() -> tuple[str, str]:
        """A fresh account no one else knows: (checksum address, private key as 0x-prefixed hex)."""
        account = Account.create()
        return account.address, "0x" + bytes(account.key).hex()

    def mine(self, blocks: int = 1) -> int:
        """Mines `blocks` empty blocks at once (confirmations for a payment); returns the new
        block number."""
        response = self.web3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]
        if "error" in response:
            raise ChainError(f"anvil_mine failed: {response['error']}")
        return int(self.web3.eth.block_number)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        """Stops anvil (SIGTERM, then SIGKILL if it has not exited within 5 s) and removes its log.
        Safe to call twice."""
        self._terminate()
        if not self._log.closed:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> LocalChain:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
