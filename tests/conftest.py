import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests read the real evaluation data from ../shared/data unless told otherwise.
if "ACCBENCH_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["ACCBENCH_DATA_DIR"] = str(SHARED_DATA)
# Tests run the default engine (--executor local: a worker process per group); a test that
# patches something in this process passes --executor inline itself.


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ["ACCBENCH_DATA_DIR"])
    assert (d / "mbpp" / "mbpp.jsonl").exists(), f"evaluation data not found in {d}"
    return d


@pytest.fixture(scope="session")
def tiny_llama():
    from accbench.models import load_model

    return load_model("tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_gemma():
    from accbench.models import load_model

    return load_model("tiny-random-gemma")


@pytest.fixture(scope="session")
def smollm2():
    from accbench.models import load_model

    return load_model("smollm2-135m")
