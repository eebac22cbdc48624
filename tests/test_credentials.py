"""Credentials derived from the control key, and the check of an agent's: plain code over an injected clock."""

from __future__ import annotations

from spillway import credentials
from spillway.credentials import AgentAuth, AgentCredential, Enrolled
from spillway.models import Pool

from helpers import Clock

KEY = b"control-key-for-tests-0123456789"
LOCAL_0 = Enrolled("local-0", Pool.LOCAL, "https://local-0.gpu.example.com")


def test_secrets_and_task_ids_depend_on_the_key_and_are_stable() -> None:
    assert credentials.agent_secret(KEY, "local-0", 1) == credentials.agent_secret(KEY, "local-0", 1)
    secrets = {credentials.agent_secret(KEY, g, n) for g in ("local-0", "local-1") for n in (1, 2)}
    assert len(secrets) == 4 and credentials.agent_secret(b"another key", "local-0", 1) not in secrets
    task_id = credentials.task_id_for(KEY, "j-" + "1" * 32, 1)
    assert task_id == credentials.task_id_for(KEY, "j-" + "1" * 32, 1), "a redelivered attempt finds its task"
    assert task_id != credentials.task_id_for(b"another key", "j-" + "1" * 32, 1), "unguessable without the key"
    assert task_id != credentials.faas_task_id("j-" + "1" * 32, 1)
    assert credentials.task_secret(KEY, task_id) != credentials.task_secret(KEY, task_id[:-1] + "0")


def auth_over(records: dict[str, list[AgentCredential]], clock: Clock) -> AgentAuth:
    return AgentAuth(lambda gpu_id: (LOCAL_0, records[gpu_id]) if gpu_id in records else None, clock)


def test_a_credential_is_the_gpu_id_and_a_current_secret() -> None:
    clock = Clock(1000.0)
    records = {"local-0": [credentials.credential("local-0", KEY, 1)]}
    auth = auth_over(records, clock)
    secret = credentials.agent_secret(KEY, "local-0", 1)
    assert auth.check(credentials.bearer("local-0", secret)) == LOCAL_0
    for wrong in ("", "Bearer ", f"Bearer {secret}", credentials.bearer("local-1", secret),
                  credentials.bearer("local-0", credentials.agent_secret(KEY, "local-0", 2))):
        assert auth.check(wrong) is None, wrong


def test_the_previous_secret_works_until_its_window_ends_even_once_checked() -> None:
    clock = Clock(1000.0)
    old = credentials.credential("local-0", KEY, 1).model_copy(update={"valid_until": 1030.0})
    records = {"local-0": [credentials.credential("local-0", KEY, 2), old]}
    auth = auth_over(records, clock)
    old_secret, new_secret = (credentials.bearer("local-0", credentials.agent_secret(KEY, "local-0", n))
                              for n in (1, 2))
    assert auth.check(old_secret) == LOCAL_0 and auth.check(new_secret) == LOCAL_0, "two valid during the window"
    clock.advance(31)
    assert auth.check(old_secret) is None, "a checked credential is not trusted past its own end"
    assert auth.check(new_secret) == LOCAL_0


def test_a_replaced_secret_is_refused_once_its_check_is_a_minute_old() -> None:
    clock = Clock(1000.0)
    records = {"local-0": [credentials.credential("local-0", KEY, 1)]}
    auth = auth_over(records, clock)
    old = credentials.bearer("local-0", credentials.agent_secret(KEY, "local-0", 1))
    assert auth.check(old) == LOCAL_0
    records["local-0"] = [credentials.credential("local-0", KEY, 2)]  # enrolled again
    clock.advance(credentials.CHECKED_CREDENTIAL_SECONDS + 1)
    assert auth.check(old) is None
