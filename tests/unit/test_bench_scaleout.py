"""The scale-out benchmark's bulk loaders (loadtests/bench_scaleout.py) write what the stores read: its start
times and searches are only worth something if the generated data is the data a real store holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtests.bench_scaleout import DIM, histories, load_postgres, load_sqlite, user_ids
from memory.backends import open_store, sqlite_path
from memory.records import InteractionIn
from personaagent.settings import Settings, StoreSettings

USERS, INTERACTIONS = 3, 10  # 4 + 3 + 3


@pytest.fixture(params=["sqlite", "postgres"])
def loaded(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
        load_sqlite(sqlite_path(settings), USERS, INTERACTIONS, seed=0)
    else:
        url = request.getfixturevalue("postgres_url")
        settings = Settings(data_dir=tmp_path, store=StoreSettings(url=url))
        load_postgres(url, USERS, INTERACTIONS, seed=0)
    return settings


def test_the_histories_spread_every_interaction_over_every_user() -> None:
    assert [n for _, n in histories(USERS, INTERACTIONS)] == [4, 3, 3]
    assert [u for u, _ in histories(USERS, INTERACTIONS)] == user_ids(USERS)


def test_bulk_loaded_data_reads_back_as_the_store_wrote_it(loaded: Settings) -> None:
    store = open_store(loaded)
    try:
        versions = []
        for user, count in histories(USERS, INTERACTIONS):
            vectors = store.user_vectors(user)
            assert vectors.version is not None and len(vectors.ids) == count
            assert vectors.vectors.shape == (count, DIM)
            assert np.allclose(np.linalg.norm(vectors.vectors, axis=1), 1.0, atol=1e-5)  # unit vectors
            [first] = store.get_interactions(vectors.ids[:1].tolist())
            assert first.user_id == user and first.metadata == {} and first.source == "import"
            versions.append(vectors.version)
        assert len(set(versions)) == USERS
        # The counter behind user versions was moved past the loaded ones: a write after the bulk load
        # gets a version no loaded user has (a replica's cache would otherwise take it for current).
        vector = np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM)
        store.add_interactions("newcomer", [InteractionIn(input="hello")], vector, "import")
        assert store.user_version("newcomer") not in versions
        store.add_interactions(user_ids(1)[0], [InteractionIn(input="more")], vector, "import")
        assert store.user_version(user_ids(1)[0]) not in versions
    finally:
        store.close()
