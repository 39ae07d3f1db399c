import pytest

from fedwhisper.audio import load_audio, write_audio
from fedwhisper.data.common_voice import read_common_voice
from fedwhisper.data.corpus import corpus_kind, load_corpus
from fedwhisper.errors import FedwhisperError
from tests.conftest import tone

HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"


def test_hand_made_common_voice_folder(tmp_path):
    root = tmp_path / "cv-corpus" / "sv-SE"
    for name in ("a.mp3", "b.mp3", "c.mp3"):
        write_audio(root / "clips" / name, tone(1.0))
    # Sentences carry quotes: the TSVs are not CSV-quoted.
    (root / "train.tsv").write_text(
        HEADER + 'spk1\ta.mp3\tHan sa "hej" till mig.\t2\t0\t\t\t\tsv-SE\t\nspk2\tgone.mp3\tSaknas.\t2\t0\t\t\t\tsv-SE\t\n'
    )
    (root / "dev.tsv").write_text(HEADER + "spk3\tb.mp3\tVi ses i morgon.\t2\t0\t\t\t\tsv-SE\t\n")
    (root / "test.tsv").write_text(HEADER + "spk4\tc.mp3\tTack så mycket.\t2\t0\t\t\t\tsv-SE\t\n")
    assert corpus_kind(root) == "common_voice"
    corpus = load_corpus(root)
    assert sorted(corpus) == ["test", "train", "validation"]
    assert corpus["train"][0]["transcription"] == 'Han sa "hej" till mig.'
    assert corpus["validation"]["speaker_id"] == ["spk3"]
    assert corpus.skipped == {str(root / "clips" / "gone.mp3"): "not found"}
    assert load_audio(corpus["test"][0]["audio"]).size > 15_000


def test_missing_column_is_named(tmp_path):
    write_audio(tmp_path / "clips" / "a.mp3", tone(1.0))
    (tmp_path / "train.tsv").write_text("path\tsentence\na.mp3\tHej.\n")
    with pytest.raises(FedwhisperError, match="client_id"):
        read_common_voice(tmp_path)
