"""benchmarks/splice.py: a benchmark rewrites only its own block of BENCHMARKS.md."""


from splice import splice


def test_splice_replaces_only_the_named_block(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# T\n<!-- begin: a -->\nold a\n<!-- end: a -->\ntext\n<!-- begin: b -->\nold b\n<!-- end: b -->\n")
    assert splice("a", "new a\nline 2\n", md)
    assert md.read_text() == ("# T\n<!-- begin: a -->\nnew a\nline 2\n<!-- end: a -->\ntext\n"
                              "<!-- begin: b -->\nold b\n<!-- end: b -->\n")
    assert splice("a", "again", md)  # idempotent on its own output
    assert "again\n<!-- end: a -->" in md.read_text() and "old b" in md.read_text()


def test_splice_without_the_block_writes_nothing(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("<!-- begin: a -->\nx\n<!-- end: a -->\n")
    assert not splice("c", "y", md)
    assert md.read_text() == "<!-- begin: a -->\nx\n<!-- end: a -->\n"
    assert not splice("a", "y", tmp_path / "missing.md")
