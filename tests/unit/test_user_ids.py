"""One user id check, a full match, wherever an id comes in: the chat's `user`, the pydantic `UserId`, the
`{user_id}` of a path (see test_http_validation.py) and the `user_id` of a scoped API key."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import TypeAdapter, ValidationError

from memory.records import UserId, is_valid_user_id
from personaagent.settings import APIKeySetting, AuthSettings
from serving.auth import Authenticator
from serving.errors import APIError
from serving.personalized_chat import check_user_id

GOOD = ["bob", "alice@example.com", "u-1_2.3+x", "a" * 128]
BAD = ["bob\n", "bob\r\n", "\nbob", "", "a" * 129, "bob smith", "bób", None, 7, ["bob"]]


@pytest.mark.parametrize("user_id", GOOD)
def test_good_ids_pass_every_check(user_id: str) -> None:
    assert is_valid_user_id(user_id)
    assert TypeAdapter(UserId).validate_python(user_id) == user_id
    assert check_user_id(user_id) == user_id


@pytest.mark.parametrize("user_id", BAD)
def test_bad_ids_fail_every_check(user_id: object) -> None:
    assert not is_valid_user_id(user_id)
    with pytest.raises(ValidationError):
        TypeAdapter(UserId).validate_python(user_id)
    with pytest.raises(APIError) as caught:
        check_user_id(user_id)
    assert caught.value.status == 400 and caught.value.param == "user"


def test_a_key_scoped_to_an_id_no_route_accepts_is_refused_at_start() -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    Authenticator(AuthSettings(api_keys=[APIKeySetting(name="bob", sha256=digest, user_id="bob")]))
    with pytest.raises(ValueError, match="user_id"):
        Authenticator(AuthSettings(api_keys=[APIKeySetting(name="bob", sha256=digest, user_id="bob\n")]))
