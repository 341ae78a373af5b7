"""How an activity's container says whose it is: labels the engine keeps with it."""

from __future__ import annotations

from exeunit.runtime.protocols import ContainerOwner

LABEL_ACTIVITY = "io.exeunit.activity"
LABEL_AGREEMENT = "io.exeunit.agreement"
LABEL_PROVIDER = "io.exeunit.provider"
LABEL_HOME = "io.exeunit.home"  # the state directory's home id: only that home's daemon removes it
LABEL_EXPIRES = "io.exeunit.expires"  # the agreement's expiration (unix seconds): anyone reaps it after


def labels_for(owner: ContainerOwner) -> dict[str, str]:
    return {
        LABEL_ACTIVITY: owner.activity_id,
        LABEL_AGREEMENT: owner.agreement_id,
        LABEL_PROVIDER: owner.provider_id,
        LABEL_HOME: owner.home_id,
        LABEL_EXPIRES: str(int(owner.expires.timestamp())),
    }
