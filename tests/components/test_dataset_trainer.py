"""components.dataset_trainer: the Trainer's run_fn gets the Examples' sequence dataset."""
import pytest

pytest.importorskip("tfx")


def _examples(uri, dataset=None):
    from tfx.types import standard_artifacts

    a = standard_artifacts.Examples()
    a.uri = uri
    if dataset is not None:
        a.set_string_custom_property("ptum_dataset", dataset)
    return a


def test_the_recorded_dataset_is_passed_on():
    from components.dataset_trainer import dataset_of

    assert dataset_of([_examples("/p/examples/1", "/p/dataset/1/ptum")]) == "/p/dataset/1/ptum"


@pytest.mark.parametrize("arts", [[], ["none"], ["a", "b"]])
def test_examples_without_one_dataset_are_refused(arts):
    from components.dataset_trainer import dataset_of

    examples = [_examples(f"/p/examples/{i}", None if d == "none" else f"/p/{d}") for i, d in enumerate(arts)]
    with pytest.raises(ValueError, match="ptum_dataset"):
        dataset_of(examples)


def test_run_fn_without_the_dataset_says_how_to_build_the_trainer():
    from types import SimpleNamespace

    from components.trainer_module import dataset_path

    with pytest.raises(ValueError, match="DATASET_TRAINER"):
        dataset_path(SimpleNamespace(custom_config={"ptum_config": {}}))
    assert dataset_path(SimpleNamespace(custom_config={"dataset": "gs://b/d"})) == "gs://b/d"
