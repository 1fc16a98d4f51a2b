import threading

import pytest
import torch

from clipomaly_ros.core.model.toy_backend import ToyColourBackend
from clipomaly_ros.core.method.vocabulary import TextEmbedder, VocabularyError, VocabularyManager, read_name_list

TEMPLATES = ("a photo of a {}.", "a photo of the {}.")


class CountingBackend(ToyColourBackend):
    def __init__(self):
        super().__init__()
        self.prompts_encoded = 0

    def encode_text(self, prompts):
        self.prompts_encoded += len(prompts)
        return super().encode_text(prompts)


def test_shipped_dictionary_is_large_and_clean():
    names = read_name_list()
    assert len(names) >= 1000
    assert len(set(names)) == len(names)
    assert all(name == name.strip() and not name.startswith("#") for name in names)
    assert {"mattress", "tire", "deer", "automobile"} <= set(names)


def test_unreadable_dictionary_names_the_setting(tmp_path):
    with pytest.raises(VocabularyError, match="naming_dictionary"):
        read_name_list(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(VocabularyError, match="holds no names"):
        read_name_list(tmp_path / "empty.txt")


def test_embeddings_are_cached_per_name():
    backend = CountingBackend()
    embedder = TextEmbedder(backend, TEMPLATES)
    first = embedder.embed(["road", "car"])
    assert backend.prompts_encoded == 4
    again = embedder.embed(["car", "road", "deer"])
    assert backend.prompts_encoded == 6  # only "deer" was new
    torch.testing.assert_close(again[0], first[1])


def test_dictionary_embeddings_are_cached_on_disk(tmp_path):
    names = ["mattress", "tire", "automobile", "garden gnome"]
    backend = CountingBackend()
    stored = TextEmbedder(backend, TEMPLATES).embed_many(names, ["a photo of a {}."], tmp_path)
    assert backend.prompts_encoded == 4 and len(list(tmp_path.glob("text-*.npy"))) == 1
    fresh = CountingBackend()
    loaded = TextEmbedder(fresh, TEMPLATES).embed_many(names, ["a photo of a {}."], tmp_path)
    assert fresh.prompts_encoded == 0
    torch.testing.assert_close(loaded, stored)
    TextEmbedder(fresh, TEMPLATES).embed_many(names, ["a picture of a {}."], tmp_path)
    assert fresh.prompts_encoded == 4  # other templates: another cache entry


def test_names_meaning_a_known_class_are_excluded_from_the_dictionary(tmp_path):
    manager = VocabularyManager(TextEmbedder(ToyColourBackend(), TEMPLATES),
                                ["automobile", "tree", "mattress", "road", "tire"], 0.9, tmp_path)
    vocabulary = manager.set(["road", "car", "vegetation"], ["deer"])
    assert set(vocabulary.excluded) == {"automobile", "tree", "road"}
    assert vocabulary.dictionary == ("mattress", "tire")
    assert vocabulary.dictionary_embeddings.shape[0] == 2
    with pytest.raises(VocabularyError, match="known_classes is empty"):
        manager.set([], ["deer"])
    assert manager.current is vocabulary  # a rejected change keeps the old vocabulary


def test_vocabulary_changes_while_another_thread_reads(tmp_path):
    manager = VocabularyManager(TextEmbedder(ToyColourBackend(), TEMPLATES), ["mattress", "tire"], 0.9, tmp_path)
    manager.set(["road"], [])
    errors = []

    def reader():
        for _ in range(300):
            vocabulary = manager.current
            if vocabulary.known_embeddings.shape[0] != len(vocabulary.known):
                errors.append("inconsistent snapshot")

    thread = threading.Thread(target=reader)
    thread.start()
    for index in range(100):
        manager.set(["road", "car", "sky"][: 1 + index % 3], ["deer"] if index % 2 else [])
    thread.join()
    assert errors == []


def test_dictionary_names_get_the_same_template_ensemble_as_the_known_classes(tmp_path):
    embedder = TextEmbedder(ToyColourBackend(), TEMPLATES)
    manager = VocabularyManager(embedder, ["mattress", "tire"], 0.9, tmp_path)
    vocabulary = manager.set(["road"], [])
    # a dictionary name embeds exactly as the same name would as a known class: one ensemble, one softmax
    torch.testing.assert_close(vocabulary.dictionary_embeddings, embedder.embed(["mattress", "tire"]))
