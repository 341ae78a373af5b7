"""goth's mid-agreement payments scenario (issue 29): its requestor agent in yapapi's style
(tests/yapapi_style/mid_agreement_payments.py) against one provider as goth's provider-1 is, an
`exeunit serve` in its own process offering its defaults (a debit note every 120 s, payment due
120 s after a payable one) on the platform the agent pays on, erc20-holesky-tglm, here a local
chain (anvil) with the test token, as goth's own network is. The agent's strategy takes intervals
of 25 to 30 s and payment timeouts of 60 to 70 s; asking for a day enables mid-agreement payments,
so the 120 s offered is negotiated down to 30 and its 105 s task sees debit notes that often.

The checks are goth's: mid-agreement payments enabled, then each "Debit notes for activity"
line (not a payable one's) counts 1, 2, 3... with no more notes than the interval allows (its
grace period of 30 s), at least two of them, the script's ShutdownFinished, and no ERROR line."""

from __future__ import annotations

import os
import re
from pathlib import Path

from exeunit.testing.chain import CHAIN_ID
from requestor.payment_account import PaymentAccount
from tests.daemon_process import Daemon
from tests.test_yapapi_tasks import TaskScript, no_errors

DEBIT_NOTE_INTERVAL_GRACE_PERIOD = 30  # goth's test defines it, as yapapi's engine does
PLATFORM = "erc20-holesky-tglm"  # Golem(payment_network="holesky") with the default driver


def debit_note_counts(lines: list[str]) -> str:
    """goth's assert_debit_note_freq over the script's output."""
    expected_note_num = 1
    received_freq: int | None = None
    note_num = 0
    for line in lines:
        if received_freq is None and (interval := re.search(r"Debit notes interval: ([0-9]+)", line)):
            received_freq = int(interval.group(1))
        counted = re.search(r"Debit notes for activity.* ([0-9]+) notes/([0-9]+)", line)
        if counted and "Payable" not in line:
            note_num, total_time = int(counted.group(1)), int(counted.group(2))
            assert note_num == expected_note_num, f"Unexpected debit note number: {line}"
            expected_note_num += 1
            assert received_freq is not None, "Expected debit note frequency message before a debit note"
            assert total_time + DEBIT_NOTE_INTERVAL_GRACE_PERIOD > note_num * received_freq, f"Too many notes: {line}"
    assert note_num >= 2, "Expected at least two debit notes"
    return f"{note_num} debit notes processed"


def test_debit_notes_come_at_the_negotiated_interval_during_one_agreement(chain, tmp_path: Path, engine) -> None:
    payee = chain.new_account()[0]
    provider = Daemon("--name", "provider-1", "--subnet", "goth", "--max-cpu-threads", "1",
                      "--payment-platform", PLATFORM, "--payment-address", payee,
                      "--payment-token-address", chain.token.address, "--payment-chain-id", str(CHAIN_ID),
                      "--payment-rpc-url", chain.url)
    try:
        key = tmp_path / "payer-key"
        chain.fund(PaymentAccount.load(key).address, eth=1, glm=100)
        env = {**os.environ, "GOLEM_PROVIDERS": f"127.0.0.1:{provider.port}", "GOLEM_PAYMENT_RPC_URL": chain.url,
               "GOLEM_PAYMENT_CHAIN_ID": str(CHAIN_ID), "GOLEM_PAYMENT_TOKEN_ADDRESS": chain.token.address,
               "GOLEM_PAYMENT_KEY_FILE": str(key)}
        env.pop("GOLEM_PAYMENT_CONFIRMATIONS", None)
        script = TaskScript("mid_agreement_payments.py", tmp_path, "--log-file",
                            str(tmp_path / "mid-agreement-payments.log"), env=env)
        try:
            script.wait_for(r".*Enabling mid-agreement payments.*", timeout=60)
            script.wait_for(r".*ShutdownFinished.*", timeout=200)
            script.ended(timeout=60)
        finally:
            if script.process.poll() is None:
                script.process.kill()
        output = "\n".join(script.lines)
        assert re.search(rf"Negotiated property {re.escape('golem.com.scheme.payu.debit-note.interval-sec?')} = "
                         r"120(\.0)? outside of our accepted range: \(25, 30\)\. Proposing our own value instead: 30",
                         output), output  # the provider's 120 s, clamped as goth's yagna provider's is
        print(debit_note_counts(script.lines))
        no_errors(script.lines)
        assert "Task finished: Task(id=1, data=None)." in script.lines, output
    finally:
        provider.stop()
    assert not [line for line in provider.lines if "level=error" in line], "".join(provider.lines)

