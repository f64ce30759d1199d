"""The build context: which files a COPY takes, what it refuses (escapes), and the hashes caches are keyed by."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from corral.templates.context import BuildContext, ContextError, cache_key, parse_dockerignore
from corral.templates.dockerfile import parse


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    return tree(tmp_path / "ctx", {
        "app.py": "print(1)\n",
        "util.py": "x = 1\n",
        ".env": "SECRET=1\n",
        "README.md": "# readme\n",
        "src/main.py": "main\n",
        "src/lib/deep.py": "deep\n",
        "src/lib/data.json": "{}\n",
        "docs/a.md": "a\n",
        "docs/b.md": "b\n",
        "build/out.bin": "bin\n",
    })


def rels(ctx: BuildContext, found: list[Path]) -> list[str]:
    return [p.relative_to(ctx.root).as_posix() if p != ctx.root else "." for p in found]


def refused(ctx: BuildContext, *patterns: str) -> str:
    with pytest.raises(ContextError) as info:
        ctx.resolve_sources(list(patterns))
    return str(info.value)


# -- sources and globs ------------------------------------------------------------------------------


def test_literal_sources_in_the_order_written(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir)
    assert rels(ctx, ctx.resolve_sources(["src", "app.py", "./docs/a.md", "."])) == ["src", "app.py", "docs/a.md", "."]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("*.py", ["app.py", "util.py"]),
    ("?til.py", ["util.py"]),
    ("[au]*.py", ["app.py", "util.py"]),
    ("[^a]*.py", ["util.py"]),
    ("docs/*.md", ["docs/a.md", "docs/b.md"]),
    ("*/main.py", ["src/main.py"]),
    ("src/*", ["src/lib", "src/main.py"]),
    ("**/*.py", ["app.py", "src/lib/deep.py", "src/main.py", "util.py"]),
    ("src/**/*.json", ["src/lib/data.json"]),
    (".e*", [".env"]),
    ("*", [".env", "README.md", "app.py", "build", "docs", "src", "util.py"]),
])
def test_globs_follow_docker_rules(ctx_dir: Path, pattern: str, expected: list[str]) -> None:
    ctx = BuildContext(ctx_dir)
    assert rels(ctx, ctx.resolve_sources([pattern])) == expected


def test_star_never_crosses_a_slash(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir)
    assert "src/main.py" not in rels(ctx, ctx.resolve_sources(["*.py"]))


def test_a_glob_may_match_nothing_but_not_every_source(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir)
    assert rels(ctx, ctx.resolve_sources(["app.py", "requirements.tx[t]"])) == ["app.py"]
    assert "no source files were specified" in refused(ctx, "*.nothing")


def test_a_missing_literal_source_is_an_error(ctx_dir: Path) -> None:
    assert refused(BuildContext(ctx_dir), "missing.txt") == "missing.txt: not found in the build context"


def test_duplicate_matches_are_listed_once(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir)
    assert rels(ctx, ctx.resolve_sources(["app.py", "*.py"])) == ["app.py", "util.py"]


# -- .dockerignore -----------------------------------------------------------------------------------


def test_parse_dockerignore_cleans_patterns() -> None:
    text = "\ufeff# comment\n\n  build/  \n/docs\n!  docs/a.md\n**/*.pyc\nsrc/../tmp\n"
    assert parse_dockerignore(text) == ["build", "docs", "!docs/a.md", "**/*.pyc", "tmp"]


def test_dockerignore_excludes_with_exceptions(ctx_dir: Path) -> None:
    (ctx_dir / ".dockerignore").write_text("*.md\ndocs\n!docs/a.md\n.env\n**/*.json\n")
    ctx = BuildContext.load(ctx_dir)
    assert ctx.ignored("README.md") and ctx.ignored("docs/b.md") and ctx.ignored("src/lib/data.json")
    assert not ctx.ignored("docs/a.md") and not ctx.ignored("app.py")
    assert [e.rel for e in ctx.entries(ctx.resolve_sources(["."]))] == [
        ".", ".dockerignore", "app.py", "build", "build/out.bin", "docs/a.md",
        "src", "src/lib", "src/lib/deep.py", "src/main.py", "util.py"]


def test_excluding_a_directory_excludes_everything_under_it(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir, ["src"])
    assert ctx.ignored("src/lib/deep.py")
    assert rels(ctx, ctx.resolve_sources(["**/*.py"])) == ["app.py", "util.py"]


def test_the_last_matching_pattern_wins(ctx_dir: Path) -> None:
    assert not BuildContext(ctx_dir, ["*.py", "!app.py"]).ignored("app.py")
    assert BuildContext(ctx_dir, ["!app.py", "*.py"]).ignored("app.py")


def test_double_star_in_dockerignore(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir, ["**/lib", "build/**"])
    assert ctx.ignored("src/lib/deep.py") and ctx.ignored("build/out.bin")
    assert not ctx.ignored("src/main.py") and not ctx.ignored("build")


def test_an_excluded_literal_source_is_an_error_and_globs_skip_it(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir, [".env", "/util.py"])
    assert refused(ctx, ".env") == ".env: excluded by .dockerignore"
    assert rels(ctx, ctx.resolve_sources(["*.py", ".*"])) == ["app.py"]


def test_a_bad_dockerignore_pattern_is_an_error(ctx_dir: Path) -> None:
    with pytest.raises(ContextError, match=r"\.dockerignore: bad pattern"):
        BuildContext(ctx_dir, ["[abc"])


# -- escapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "message"), [
    ("../secret", "../secret: outside the build context (..)"),
    ("..", "..: outside the build context (..)"),
    ("src/../../secret", "src/../../secret: outside the build context (..)"),
    ("*/../../secret*", "*/../../secret*: outside the build context (..)"),
    ("/etc/passwd", "/etc/passwd: absolute source path: COPY sources are relative to the build context"),
    ("/", "/: absolute source path"),
])
def test_sources_outside_the_context_are_refused(ctx_dir: Path, source: str, message: str) -> None:
    (ctx_dir.parent / "secret").write_text("s3cret")
    assert refused(BuildContext(ctx_dir), source).startswith(message)


def test_dot_dot_that_stays_inside_is_fine(ctx_dir: Path) -> None:
    ctx = BuildContext(ctx_dir)
    assert rels(ctx, ctx.resolve_sources(["src/../app.py"])) == ["app.py"]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return tree(tmp_path / "outside", {"secret.txt": "s3cret\n", "dir/inner.txt": "inner\n"})


def test_a_symlink_to_outside_is_refused_not_followed(ctx_dir: Path, outside: Path) -> None:
    os.symlink(outside / "secret.txt", ctx_dir / "abs-link")
    os.symlink("../outside/secret.txt", ctx_dir / "rel-link")
    ctx = BuildContext(ctx_dir)
    for name in ("abs-link", "rel-link"):
        message = refused(ctx, name)
        assert message == f"{name}: resolves outside the build context (through a symlink)"
        assert str(outside) not in message  # host paths are not shown to the caller


def test_a_glob_that_matches_an_escaping_symlink_is_refused(ctx_dir: Path, outside: Path) -> None:
    os.symlink(outside / "secret.txt", ctx_dir / "zz.py")
    assert "resolves outside the build context" in refused(BuildContext(ctx_dir), "*.py")


def test_a_path_through_a_symlinked_directory_outside_is_refused(ctx_dir: Path, outside: Path) -> None:
    os.symlink(outside / "dir", ctx_dir / "linkdir")
    ctx = BuildContext(ctx_dir)
    assert "resolves outside" in refused(ctx, "linkdir/inner.txt")
    assert "resolves outside" in refused(ctx, "linkdir/*.txt")
    assert "resolves outside" in refused(ctx, "linkdir")


def test_an_escaping_symlink_inside_a_copied_directory_is_refused(ctx_dir: Path, outside: Path) -> None:
    os.symlink(outside / "secret.txt", ctx_dir / "src" / "lib" / "sneaky")
    ctx = BuildContext(ctx_dir)
    found = ctx.resolve_sources(["src"])  # the directory itself is inside
    with pytest.raises(ContextError, match=r"^src/lib/sneaky: resolves outside the build context"):
        ctx.content_hash(found)


def test_an_escaping_symlink_can_be_dockerignored(ctx_dir: Path, outside: Path) -> None:
    os.symlink(outside / "secret.txt", ctx_dir / "src" / "sneaky")
    ctx = BuildContext(ctx_dir, ["src/sneaky"])
    assert "src/sneaky" not in [e.rel for e in ctx.entries(ctx.resolve_sources(["src"]))]


def test_symlinks_inside_the_context_are_kept_or_followed(ctx_dir: Path) -> None:
    os.symlink("main.py", ctx_dir / "src" / "alias.py")
    os.symlink("src", ctx_dir / "srclink")
    ctx = BuildContext(ctx_dir)
    entries = {e.rel: e for e in ctx.entries(ctx.resolve_sources(["src", "srclink/main.py"]))}
    assert (entries["src/alias.py"].kind, entries["src/alias.py"].target) == ("symlink", "main.py")
    assert entries["srclink/main.py"].kind == "file"
    assert entries["srclink/main.py"].path == (ctx_dir / "src" / "main.py").resolve()
    followed = ctx.entries(ctx.resolve_sources(["srclink"]))
    assert {e.rel for e in followed} >= {"srclink", "srclink/main.py", "srclink/lib/deep.py"}


def test_dangling_and_looping_symlink_sources_are_errors_not_crashes(ctx_dir: Path) -> None:
    os.symlink("nowhere", ctx_dir / "dangling")
    os.symlink("loop-b", ctx_dir / "loop-a")
    os.symlink("loop-a", ctx_dir / "loop-b")
    ctx = BuildContext(ctx_dir)
    for name in ("dangling", "loop-a"):
        with pytest.raises(ContextError, match=rf"{name}: can't be read"):
            ctx.entries(ctx.resolve_sources([name]))


def test_special_files_are_refused(ctx_dir: Path) -> None:
    os.mkfifo(ctx_dir / "src" / "pipe")
    ctx = BuildContext(ctx_dir)
    with pytest.raises(ContextError, match="not a regular file"):
        ctx.content_hash(ctx.resolve_sources(["src"]))


def test_entries_refuse_paths_outside_the_root(ctx_dir: Path, outside: Path) -> None:
    with pytest.raises(ContextError, match="outside the build context"):
        BuildContext(ctx_dir).entries([outside / "secret.txt"])


# -- content hash -------------------------------------------------------------------------------------


def digest(ctx_dir: Path, *patterns: str) -> str:
    ctx = BuildContext.load(ctx_dir)
    return ctx.content_hash(ctx.resolve_sources(list(patterns)))


def test_content_hash_is_stable_and_ignores_listing_order(ctx_dir: Path) -> None:
    first = digest(ctx_dir, "src", "app.py")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    assert digest(ctx_dir, "src", "app.py") == first
    assert digest(ctx_dir, "app.py", "src") == first
    ctx = BuildContext(ctx_dir)
    assert ctx.content_hash(list(reversed(ctx.resolve_sources(["src", "app.py"])))) == first


def test_content_hash_changes_with_one_byte(ctx_dir: Path) -> None:
    before = digest(ctx_dir, "src")
    (ctx_dir / "src/lib/deep.py").write_text("deeP\n")
    assert digest(ctx_dir, "src") != before


def test_content_hash_changes_with_a_mode(ctx_dir: Path) -> None:
    before = digest(ctx_dir, "src")
    os.chmod(ctx_dir / "src/main.py", 0o755)
    assert digest(ctx_dir, "src") != before


def test_content_hash_changes_with_a_rename_or_a_new_file(ctx_dir: Path) -> None:
    before = digest(ctx_dir, "src")
    os.rename(ctx_dir / "src/main.py", ctx_dir / "src/main2.py")
    renamed = digest(ctx_dir, "src")
    (ctx_dir / "src/empty").mkdir()
    assert len({before, renamed, digest(ctx_dir, "src")}) == 3


def test_content_hash_changes_with_a_symlink_target(ctx_dir: Path) -> None:
    os.symlink("main.py", ctx_dir / "src/alias")
    before = digest(ctx_dir, "src")
    os.remove(ctx_dir / "src/alias")
    os.symlink("lib/deep.py", ctx_dir / "src/alias")
    assert digest(ctx_dir, "src") != before


def test_content_hash_ignores_mtimes_and_excluded_files(ctx_dir: Path) -> None:
    (ctx_dir / ".dockerignore").write_text("src/lib/data.json\n")
    before = digest(ctx_dir, "src")
    os.utime(ctx_dir / "src/main.py", (1, 1))
    (ctx_dir / "src/lib/data.json").write_text('{"changed": true}\n')
    assert digest(ctx_dir, "src") == before


def test_content_hash_of_moved_context_is_the_same(ctx_dir: Path, tmp_path: Path) -> None:
    before = digest(ctx_dir, ".")
    moved = tmp_path / "elsewhere"
    os.rename(ctx_dir, moved)
    assert digest(moved, ".") == before


# -- cache keys ---------------------------------------------------------------------------------------


def instruction(text: str, **build_args: str):
    return parse("FROM base\n" + text, build_args).steps[-1]


BASE_KEY = dict(parent="sha256:" + "0" * 64, copied_hash="sha256:" + "1" * 64, build_args={"A": "1", "B": "2"})


def key(**change: object) -> str:
    args = {**BASE_KEY, "instruction": instruction("COPY app.py /app/"), **change}
    return cache_key(args["parent"], args["instruction"], args["copied_hash"], args["build_args"])


def test_cache_key_is_deterministic_and_ignores_build_arg_order() -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", key())
    assert key() == key(build_args={"B": "2", "A": "1"})


@pytest.mark.parametrize("change", [
    {"parent": "sha256:" + "9" * 64},
    {"instruction": instruction("COPY app.py /srv/")},
    {"instruction": instruction("COPY --chown=user app.py /app/")},
    {"instruction": instruction("COPY --chmod=600 app.py /app/")},
    {"instruction": instruction("ADD app.py /app/")},
    {"copied_hash": "sha256:" + "2" * 64},
    {"copied_hash": None},
    {"build_args": {"A": "1", "B": "3"}},
    {"build_args": {"A": "1", "C": "2"}},
    {"build_args": {"A": "1"}},
])
def test_cache_key_changes_with_each_input(change: dict[str, object]) -> None:
    assert key(**change) != key()


def test_cache_key_ignores_line_numbers() -> None:
    moved = parse("FROM base\n\n\n# later\nCOPY app.py /app/\n").steps[-1]
    assert moved.line != instruction("COPY app.py /app/").line
    assert key(instruction=moved) == key()


def test_run_steps_key_by_their_command_and_build_args() -> None:
    run = instruction("ARG V=1\nRUN make")
    other = instruction("ARG V=2\nRUN make")
    assert cache_key("p", run, None, dict(run.build_args)) != cache_key("p", other, None, dict(other.build_args))
    assert cache_key("p", run, None, {}) == cache_key("p", other, None, {})
    assert cache_key("p", run, None, {}) != cache_key("p", instruction("RUN make all"), None, {})


def test_dockerignore_is_read_only_as_a_plain_file_of_the_context(tmp_path: Path) -> None:
    """A caller's context is uploaded: its ``.dockerignore`` must not make the server (root) read a
    host file through a link, block on a FIFO, or read without bound."""
    host = tmp_path / "host-secret"
    host.write_text("root:$y$j9T$abc[def\n")  # a line that would come back in a pattern error
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / ".dockerignore").symlink_to(host)
    with pytest.raises(ContextError, match="not a link") as err:
        BuildContext.load(ctx)
    assert "abc" not in str(err.value)
    (ctx / ".dockerignore").unlink()
    os.mkfifo(ctx / ".dockerignore")
    with pytest.raises(ContextError, match="regular file"):
        BuildContext.load(ctx)
    (ctx / ".dockerignore").unlink()
    (ctx / ".dockerignore").write_text("#\n" * (1 << 20))
    with pytest.raises(ContextError, match="larger than"):
        BuildContext.load(ctx)
    (ctx / ".dockerignore").write_text("build\n")
    assert BuildContext.load(ctx).ignored("build/x")
    (ctx / ".dockerignore").unlink()
    (ctx / ".dockerignore").mkdir()
    assert not BuildContext.load(ctx).ignored("build/x")
