"""Report helpers: the model-card section is replaced in place, files are written atomically."""

from diffuspec.cards import CARD_BEGIN, CARD_END, update_model_card
from diffuspec.files import atomic_write_text


def test_model_card_section_is_replaced_not_appended_twice(tmp_path):
    (tmp_path / "README.md").write_text("# My drafter\n\nIntro.\n")
    update_model_card(tmp_path, f"{CARD_BEGIN}\nfirst\n{CARD_END}\n")
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# My drafter\n\nIntro.\n\n") and "first" in text
    (tmp_path / "README.md").write_text(text + "\n## License\n\nApache-2.0\n")
    update_model_card(tmp_path, f"{CARD_BEGIN}\nsecond\n{CARD_END}\n")
    text = (tmp_path / "README.md").read_text()
    assert text.count(CARD_BEGIN) == 1 and "second" in text and "first" not in text
    assert text.index("Intro.") < text.index("second") < text.index("## License")


def test_model_card_created_when_missing(tmp_path):
    update_model_card(tmp_path, f"{CARD_BEGIN}\nx\n{CARD_END}\n")
    assert (tmp_path / "README.md").read_text() == f"{CARD_BEGIN}\nx\n{CARD_END}\n"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.json", "{}\n")
    atomic_write_text(tmp_path / "sub" / "a.json", "[]\n")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]
    assert (tmp_path / "sub" / "a.json").read_text() == "[]\n"
