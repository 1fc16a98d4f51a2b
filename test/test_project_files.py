"""The project's own files that tools outside Python read: the ROS changelog (catkin_pkg, bloom) and CITATION.cff
(GitHub's citation box, cffconvert). Structural checks only: nothing is fetched."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

CFF_REQUIRED = ("cff-version", "message", "title", "authors")
"""The keys CITATION.cff 1.2.0 requires at its top level."""


def test_the_changelog_parses_as_ros_release_tools_read_it():
    """catkin_pkg reads the released versions (it leaves *Forthcoming* to catkin_generate_changelog, which looks for
    the heading itself); what is not yet released is listed under that heading."""
    from catkin_pkg.changelog import Changelog, populate_changelog_from_rst

    text = (REPO / "CHANGELOG.rst").read_text()
    changelog = Changelog("clipomaly_ros")
    populate_changelog_from_rst(changelog, text)
    released = [version for version, _, _ in changelog.foreach_version()]
    assert "0.1.0" in released and all(len(version.split(".")) == 3 for version in released), released
    assert changelog.get_content_of_version("0.1.0"), "0.1.0 has no entries"
    assert "\nForthcoming\n-----------\n" in text, "no Forthcoming section for catkin_generate_changelog"
    forthcoming = text.split("\nForthcoming\n", 1)[1].split("\n0.1.0 ", 1)[0]
    for subject in ("review", "import", "frames", "export", "release", "release_id", "gpu-check", "mine", "tagger"):
        assert subject in forthcoming, f"Forthcoming does not mention {subject}"


def test_the_citation_file_has_the_keys_of_its_format():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    missing = [key for key in CFF_REQUIRED if not citation.get(key)]
    assert not missing, f"CITATION.cff lacks {missing}"
    for person in citation["authors"] + citation["preferred-citation"]["authors"]:
        assert person.get("name") or person.get("family-names"), person
    assert citation["preferred-citation"]["type"] and citation["preferred-citation"]["title"]
